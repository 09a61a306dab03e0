"""Store a wheel fetched back from the first host that built it in the controller's wheelhouse."""

from __future__ import annotations

from pathlib import Path

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision import wheelhouse
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
        key_name = self._task.args["key"]
        files = [Path(p) for p in self._task.args["wheels"]]
        target = wheelhouse.folder_by_name(key_name)
        if (target / wheelhouse.MARKER).is_file():
            result.update(changed=False, dir=str(target))
            return result
        wheelhouse.adopt_by_name(key_name, files)
        result.update(changed=True, dir=str(target))
        return result
