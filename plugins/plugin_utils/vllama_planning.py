"""Plan one host on the controller with the CLI's own planner, for the role's actions.

Shared by the vllama_plan action (the role's preflight) and the vllama_converged action (the
converged check before the play, which plans from the facts the controller saw last). Callers
import the vllama_provision package first (and check its version).
"""

from __future__ import annotations

from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_sources import resolve_into

try:  # imported once, before the play (the callers report a missing package: require_package)
    from vllama_provision import gpu
    from vllama_provision.gateway import admin_socket, upstream_id
    from vllama_provision.inventory import HostSpec, host_vars_from_task
    from vllama_provision.paths import key_path
    from vllama_provision.planner import EngineOverride, plan_host
    from vllama_provision.render import MANAGED, rendered_digests
    from vllama_provision.validation import validate_host
except ImportError:
    pass


def plan_into(result, task_vars, templar, facts, validate=False, deployed_only=False,
              sources=False):
    """Plan the host of ``task_vars`` on ``facts`` into an action's ``result``: ``plan`` and
    the ``_vllama_plan`` fact (with ``sources``: ``_vllama_sources`` too), or a failure
    (``vllama_refused`` for refusals) in the CLI's words. ``validate`` checks the host's
    variables with the CLI's validator first; ``deployed_only`` refuses instances this release
    renders but does not deploy."""
    host = task_vars.get("inventory_hostname", "")
    host_vars = host_vars_from_task(task_vars, templar.template)
    if validate:
        groups = task_vars.get("group_names") or ()
        problems = [p.render()
                    for p in validate_host(host, host_vars, file="inventory", groups=groups)]
        if problems:
            result.update(changed=False, failed=True, problems=problems,
                          msg="invalid inventory: " + "; ".join(problems))
            return
    if facts:
        problems = gpu.validate_host_facts(facts)
        if problems:
            result.update(failed=True, msg="host facts are malformed: " + "; ".join(problems))
            return
    override = EngineOverride.from_vars(host_vars.get("vllama_engine_override"))  # templated
    plan = plan_host(HostSpec(name=host, file="inventory", vars=host_vars,
                              groups=tuple(task_vars.get("group_names") or ())),
                     facts, override)
    data = plan.to_dict()
    data["managed"] = MANAGED
    if plan.platform is not None and not plan.refused:
        # What the host's files must hold (the converged check compares their hashes)...
        data["rendered"] = rendered_digests(plan)
        # ... and which key copies this controller holds (verification reads them).
        data["controller_keys"] = {i.name: key_path(host, i.name).is_file()
                                   for i in plan.instances}
    # The fleet's gateways (whatever the run's limit): a restart drains the instance from
    # each of them first and returns it once it verified.
    data["gateways"] = {
        "hosts": list((task_vars.get("groups") or {}).get("vllama_gateways") or []),
        "socket": admin_socket(),
        "servers": {i.name: upstream_id(host, i.name) for i in plan.instances}}
    refusals = [f"{c['instance'] + ': ' if c['instance'] else ''}{c['message']}"
                for c in data["checks"] + [c for i in data["instances"] for c in i["checks"]]
                if c["level"] == "refuse"]
    result.update(changed=False, plan=data, ansible_facts={"_vllama_plan": data})
    if deployed_only:
        refusals += [f"{i['name']}: {i['deploy']} {i['server']} under {i['service_manager']} "
                     "is rendered by `vllama-provision render` but not applied by this release"
                     for i in data["instances"]
                     if i["service_manager"] not in ("systemd", "launchd")]
    if refusals:
        result.update(failed=True, vllama_refused=True,
                      msg="REFUSED: " + "; ".join(refusals))
    elif data["platform"] is None:
        result.update(failed=True, vllama_refused=True,
                      msg="REFUSED: the platform could not be determined from the facts")
    else:
        result["msg"] = f"{len(data['instances'])} instance(s) planned on {data['platform']}"
        if sources:
            resolve_into(result, data, facts or {}, task_vars, templar)
