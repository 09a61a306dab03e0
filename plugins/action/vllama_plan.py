"""Plan this host with the CLI's own planner (runs on the controller).

Returns the plan as the ``_vllama_plan`` fact; every template on the host is rendered from it,
exactly as ``vllama-provision render`` renders it. Refusals fail the task with
``vllama_refused: true`` so the report marks the host ``refused``.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision import gpu
    from vllama_provision.inventory import HostSpec, host_vars_from_task, to_plain
    from vllama_provision.planner import EngineOverride, plan_host
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
        host_vars = host_vars_from_task(task_vars, self._templar.template)
        facts = to_plain(self._task.args.get("facts") or None)
        if facts:
            problems = gpu.validate_host_facts(facts)
            if problems:
                result.update(failed=True, msg="host facts are malformed: " + "; ".join(problems))
                return result
        override = EngineOverride.from_vars(host_vars.get("vllama_engine_override"))  # templated
        plan = plan_host(HostSpec(name=host, file="inventory", vars=host_vars), facts, override)
        data = plan.to_dict()
        data["managed"] = MANAGED
        refusals = [f"{c['instance'] + ': ' if c['instance'] else ''}{c['message']}"
                    for c in data["checks"] + [c for i in data["instances"] for c in i["checks"]]
                    if c["level"] == "refuse"]
        result.update(changed=False, plan=data, ansible_facts={"_vllama_plan": data})
        if refusals:
            result.update(failed=True, vllama_refused=True,
                          msg="REFUSED: " + "; ".join(refusals))
        elif data["platform"] is None:
            result.update(failed=True, vllama_refused=True,
                          msg="REFUSED: the platform could not be determined from the facts")
        else:
            result["msg"] = f"{len(data['instances'])} instance(s) planned on {data['platform']}"
        return result
