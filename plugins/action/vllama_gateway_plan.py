"""Plan this host's gateway from the whole inventory (runs on the controller).

Validates the gateway host's variables and the fleet-level rules with the CLI's own
validators, plans the routes from every host of the inventory (``hostvars``, whatever the run's
limit) and sets the ``_vllama_gateway`` fact the gateway's templates are rendered from, exactly
as ``vllama-provision render`` renders them. Refusals fail the task with
``vllama_refused: true``.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision import facts as fact_cache
    from vllama_provision.gateway import key_copy_present, plan_fleet_gateways
    from vllama_provision.inventory import fleet_for_plugin
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
        if me is None or not me.gateway:
            result.update(failed=True, msg=f"{host} is not in the group vllama_gateways")
            return result
        if problems:
            result.update(failed=True, vllama_refused=True, problems=problems,
                          msg="invalid inventory: " + "; ".join(problems))
            return result
        plan = plan_fleet_gateways(fleet, fact_cache.from_hostvars(hostvars),
                                   key_present=key_copy_present)[host]
        data = plan.to_dict()
        data["managed"] = MANAGED
        result.update(changed=False, gateway=data, ansible_facts={"_vllama_gateway": data})
        return result
