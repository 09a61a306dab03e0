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

import hashlib

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_sources import resolve_into

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision import gpu
    from vllama_provision.gateway import admin_socket, upstream_id
    from vllama_provision.inventory import HostSpec, host_vars_from_task, to_plain
    from vllama_provision.paths import key_path
    from vllama_provision.planner import EngineOverride, plan_host
    from vllama_provision.render import MANAGED, render_host
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
        args = self._task.args
        if boolean(args.get("validate", False), strict=False):
            groups = task_vars.get("group_names") or ()
            problems = [p.render()
                        for p in validate_host(host, host_vars, file="inventory", groups=groups)]
            if problems:
                result.update(changed=False, failed=True, problems=problems,
                              msg="invalid inventory: " + "; ".join(problems))
                return result
        facts = to_plain(args.get("facts") or None)
        if facts:
            problems = gpu.validate_host_facts(facts)
            if problems:
                result.update(failed=True, msg="host facts are malformed: " + "; ".join(problems))
                return result
        override = EngineOverride.from_vars(host_vars.get("vllama_engine_override"))  # templated
        plan = plan_host(HostSpec(name=host, file="inventory", vars=host_vars,
                                  groups=tuple(task_vars.get("group_names") or ())),
                         facts, override)
        data = plan.to_dict()
        data["managed"] = MANAGED
        if plan.platform is not None and not plan.refused:
            # What the host's files must hold (the converged check compares their hashes)...
            data["rendered"] = [
                {"instance": f.instance, "dest": f.dest, "mode": f.mode,
                 "sha256": hashlib.sha256(f.content.encode("utf-8")).hexdigest()}
                for f in render_host(plan)]
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
        if boolean(args.get("deployed_only", False), strict=False):
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
            if boolean(args.get("sources", False), strict=False):
                resolve_into(result, data, facts or {}, task_vars, self._templar)
        return result
