"""Validate this host's vllama_* variables with the CLI's own validator (runs on the controller).

The same code (vllama_provision.validation) refuses bad input in the CLI before any host is
contacted; running it again here protects plays started with ansible-playbook directly.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision.inventory import host_vars_from_task
    from vllama_provision.validation import validate_host
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
        host = task_vars.get("inventory_hostname", "")
        host_vars = host_vars_from_task(task_vars, self._templar.template)
        problems = validate_host(host, host_vars, file="inventory",
                                 groups=task_vars.get("group_names") or ())
        result["changed"] = False
        if problems:
            result["failed"] = True
            result["problems"] = [p.render() for p in problems]
            result["msg"] = "invalid inventory: " + "; ".join(result["problems"])
        else:
            result["msg"] = "inventory variables are valid"
        return result
