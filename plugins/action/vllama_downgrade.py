"""Refuse an engine downgrade the operator did not ask for (runs on the controller).

The inventory's ``engine_version`` is the desired state, and a host that already runs a newer
engine than it asks for is refused (with both versions) unless the run allows downgrades
(``vllama-provision apply --allow-downgrade``, extra variable ``vllama_allow_downgrade``).
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision.releases import downgrades
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
        args = self._task.args
        found = downgrades(args.get("instances") or [], args.get("releases") or {})
        result["changed"] = False
        result["downgrades"] = found
        if found and not args.get("allow"):
            result.update(failed=True, vllama_refused=True,
                          msg="REFUSED: " + "; ".join(found) + ". The inventory asks for an "
                          "older engine than the host runs; pass --allow-downgrade to downgrade")
        elif found:
            result["msg"] = "downgrade allowed: " + "; ".join(found)
        return result
