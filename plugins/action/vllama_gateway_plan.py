"""Plan this host's gateway from the whole inventory (runs on the controller).

Validates the gateway host's variables and the fleet-level rules with the CLI's own
validators, plans the routes from every host of the inventory (``hostvars``, whatever the run's
limit) and sets the ``_vllama_gateway`` fact the gateway's templates are rendered from, exactly
as ``vllama-provision render`` renders them. Refusals fail the task with
``vllama_refused: true``.
"""

from __future__ import annotations

from pathlib import Path

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision import facts as fact_cache
    from vllama_provision import gpu
    from vllama_provision.fleet import validate_fleet
    from vllama_provision.gateway import key_copy_present, plan_fleet_gateways
    from vllama_provision.inventory import fleet_from_hostvars, to_plain
    from vllama_provision.render import MANAGED
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
        hostvars = task_vars.get("hostvars") or {}
        fleet = fleet_from_hostvars(hostvars, task_vars.get("groups") or {})
        me = next((h for h in fleet if h.name == host), None)
        if me is None or not me.gateway:
            result.update(failed=True, msg=f"{host} is not in the group vllama_gateways")
            return result
        problems = validate_host(host, me.vars, file="inventory", groups=me.groups)
        problems += validate_fleet(fleet, file="inventory")
        if problems:
            rendered = [p.render() for p in problems]
            result.update(failed=True, vllama_refused=True, problems=rendered,
                          msg="invalid inventory: " + "; ".join(rendered))
            return result

        def facts_for(spec):
            # This run's facts when the host took part in it, else the controller's cache.
            live = to_plain(hostvars[spec.name].get("vllama_facts") or None)
            if live and not gpu.validate_host_facts(live):
                return live
            source = hostvars[spec.name].get("inventory_file")
            return fact_cache.load(Path(source), spec.name) if source else None

        plan = plan_fleet_gateways(fleet, facts_for, key_present=key_copy_present)[host]
        data = plan.to_dict()
        data["managed"] = MANAGED
        result.update(changed=False, gateway=data, ansible_facts={"_vllama_gateway": data})
        return result
