"""Write the monitoring host's secret files from the controller's copies (never printed).

Prometheus' own password (its self-scrape authenticates like any client) and each llama-server
instance's key (its /metrics needs it) are read on the controller and written by the
vllama_monitoring_secrets module on the host, 0640 root:prometheus, with the secrets as no_log
arguments: the task's arguments and result hold none.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision.monitoring import MonitoringSecretError, secret_files
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        require_package(VLLAMA_IMPORT_ERROR)
        result = super().run(tmp, task_vars)
        plan = self._task.args.get("plan") or {}
        try:
            files = secret_files(plan)
        except MonitoringSecretError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        module = self._execute_module(
            module_name="vllama.provision.vllama_monitoring_secrets",
            module_args={"folder": plan["paths"]["credentials_dir"], "files": files,
                         "group": self._task.args.get("group", "prometheus")},
            task_vars=task_vars)
        module.pop("invocation", None)
        result.update(module)
        return result
