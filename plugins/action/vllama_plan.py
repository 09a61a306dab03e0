"""Plan this host with the CLI's own planner (runs on the controller).

Returns the plan as the ``_vllama_plan`` fact; every template on the host is rendered from it,
exactly as ``vllama-provision render`` renders it. Refusals fail the task with
``vllama_refused: true`` so the report marks the host ``refused``.

The role's preflight does its whole controller side in this one task (one task per host, not
four): ``validate`` checks the host's variables with the CLI's validator first (refused in its
words, as vllama_validate), ``deployed_only`` refuses instances this release renders but does
not deploy, and ``sources`` resolves where models and engine wheels come from (the
``_vllama_sources`` fact, as vllama_sources).
"""

from __future__ import annotations

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_planning import plan_into

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
        args = self._task.args
        plan_into(result, task_vars, self._templar, to_plain(args.get("facts") or None),
                  validate=boolean(args.get("validate", False), strict=False),
                  deployed_only=boolean(args.get("deployed_only", False), strict=False),
                  sources=boolean(args.get("sources", False), strict=False))
        return result
