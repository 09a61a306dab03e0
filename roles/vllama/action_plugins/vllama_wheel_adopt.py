"""Store a wheel fetched back from the first host that built it in the controller's wheelhouse."""

from __future__ import annotations

from pathlib import Path

from ansible.plugins.action import ActionBase

from vllama_provision import wheelhouse


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
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
