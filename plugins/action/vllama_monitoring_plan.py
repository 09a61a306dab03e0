"""Plan this host's part of the fleet's monitoring from the whole inventory (on the controller).

Every host of an inventory with a ``vllama_monitoring`` group gets ``_vllama_node_exporter``
(where its node exporter listens, what its systemd collector reports); a host of that group
also gets ``_vllama_monitoring``, the plan its Prometheus is rendered from (exactly as
``vllama-provision render`` renders it), validated with the CLI's own validators first, and
``_vllama_monitoring_password_hash``, the bcrypt hash of the password the controller keeps
(the password itself never leaves the controller through this plugin). Refusals fail the task
with ``vllama_refused: true``.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision import facts as fact_cache
    from vllama_provision.inventory import fleet_for_plugin
    from vllama_provision.monitoring import (
        MonitoringSecretError,
        exporter_plan,
        password_hash,
        plan_fleet_monitoring,
    )
    from vllama_provision.render import MANAGED
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
        hostvars = task_vars.get("hostvars") or {}
        fleet, me, problems = fleet_for_plugin(task_vars)
        if me is None:
            result.update(failed=True, msg=f"{host} is not in the inventory")
            return result
        if problems:
            result.update(failed=True, vllama_refused=True, problems=problems,
                          msg="invalid inventory: " + "; ".join(problems))
            return result
        facts = {"_vllama_node_exporter": {**exporter_plan(me), "managed": MANAGED}}
        if me.monitoring:
            plan = plan_fleet_monitoring(fleet, fact_cache.from_hostvars(hostvars))[host]
            try:
                hashed = password_hash(plan)
            except MonitoringSecretError as exc:
                result.update(failed=True, msg=f"vllama_monitoring_password_file: {exc}")
                return result
            data = plan.to_dict()
            data["managed"] = MANAGED
            facts.update(_vllama_monitoring=data, _vllama_monitoring_password_hash=hashed)
        result.update(changed=False, ansible_facts=facts)
        return result
