"""Garbage collection of ZFS model datasets: destroy those no release references.

Reads, through the host module ``vllama_zfs`` (state facts), the tool's model datasets under
``vllama_zfs_dataset`` and the store folders that the releases under ``vllama_install_root``
link to; decides on the controller (``vllama_provision.zfs.unreferenced``); destroys the rest
(``vllama_zfs`` state absent, with their snapshots). Datasets the tool did not make are never
touched. Options: ``keep`` (dataset names kept whatever references them). Returns ``destroyed``
and ``kept`` (dataset names). Check mode reports what it would destroy.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision import zfs
    from vllama_provision.inventory import to_plain
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        require_package(VLLAMA_IMPORT_ERROR)
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        template = self._templar.template
        parent = to_plain(template(task_vars.get("vllama_zfs_dataset") or ""))
        install_root = to_plain(template(task_vars.get("vllama_install_root") or "/opt/vllama"))
        keep = [str(k) for k in to_plain(self._task.args.get("keep") or [])]
        if not parent:
            result.update(changed=False, skipped=True, destroyed=[], kept=[],
                          msg="no vllama_zfs_dataset: nothing to collect")
            return result
        facts = self._execute_module(
            module_name="vllama.provision.vllama_zfs", task_vars=task_vars,
            module_args={"state": "facts", "parent": parent, "install_root": install_root})
        if facts.get("failed"):
            result.update(failed=True, msg=f"reading ZFS on this host failed: {facts.get('msg')}")
            return result
        if not (facts.get("pool") or {}).get("exists"):
            result.update(changed=False, destroyed=[], kept=[],
                          msg=f"pool of {parent} not found: nothing to collect")
            return result
        children = [zfs.ModelDataset(c["name"], c["mountpoint"], c.get("content") or "")
                    for c in facts.get("children") or []]
        doomed = zfs.unreferenced(children, facts.get("references") or [], keep)
        names = [d.name for d in doomed]
        kept = [c.name for c in children if c.content and c.name not in names]
        if names:
            done = self._execute_module(
                module_name="vllama.provision.vllama_zfs", task_vars=task_vars,
                module_args={"state": "absent", "parent": parent, "names": names})
            if done.get("failed"):
                result.update(failed=True, msg=done.get("msg"), destroyed=[], kept=kept)
                return result
        result.update(changed=bool(names), destroyed=names, kept=kept,
                      msg=(f"destroyed {', '.join(names)}" if names
                           else "every model dataset is referenced"))
        return result
