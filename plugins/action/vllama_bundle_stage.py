"""apply --bundle: pack this host's part of the bundle (OS packages, engine wheels) into one
archive on the controller, with the list of files and hashes the host checks after unpacking.

The part was chosen and checked against the signed manifest by ``vllama_sources`` in the
preflight; the archive is content-addressed, so hosts needing the same files share it.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision.bundle.consume import manifest_of, stage_archive
    from vllama_provision.errors import VllamaError
    from vllama_provision.inventory import to_plain
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        require_package(VLLAMA_IMPORT_ERROR)
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        host_part = to_plain(self._templar.template(task_vars["_vllama_bundle_host"]))
        bundle = to_plain(self._templar.template(task_vars["vllama_run_bundle"]))
        plan = to_plain(self._templar.template(task_vars["_vllama_plan"]))
        try:
            _folder, manifest = manifest_of(bundle)
            archive, files = stage_archive(host_part, manifest)
        except (VllamaError, OSError) as exc:
            result.update(failed=True, msg=f"could not pack the bundle for this host: {exc}")
            return result
        stage = {"archive": str(archive), "files": files, "apt": host_part["apt"],
                 "wheel_sets": host_part["wheel_sets"], "id": host_part["id"],
                 "dir": f"{plan['install_root']}/bundle/{host_part['id']}"}
        result.update(changed=False, stage={k: v for k, v in stage.items() if k != "files"},
                      ansible_facts={"_vllama_bundle_stage": stage})
        return result
