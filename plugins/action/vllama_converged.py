"""Find out, in one round trip, whether a host already matches its desired state.

The first task of the play. The controller plans the host from the facts it saw in the last run
that gathered them (vllama_provision.facts.load_seen), with the host's variables of this run,
and sends the desired state with those facts' digest to the vllama_state module, which on the
host, in one round trip: gathers the facts, and only when they are the same, takes the host
lock, compares the whole desired state (the same comparison as the role's preflight) and
releases the lock. ``converged`` is true only when nothing differs; the play then ends there for
the host (its roles would all have been skipped). Anything else (facts that changed, a
difference, a lock held by another run, a refusal, a run that repairs every phase, a check-mode
or tagged run, a host the NVIDIA or node exporter roles manage) leaves the host to the whole
play, which gathers, plans, compares and reports in its own words: this check never fails a
host and never changes one.
"""

from __future__ import annotations

from pathlib import Path

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.filter.vllama import (
    vllama_desired,
    vllama_key_digests,
)
from ansible_collections.vllama.provision.plugins.module_utils.vllama_host_facts import digest
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_lock import owner
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_planning import plan_into

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision import facts as fact_cache
    from vllama_provision.inventory import to_plain
    from vllama_provision.paths import keys_dir
    from vllama_provision.procs import boot_id
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None

MODULE = "vllama.provision.vllama_state"
# Run modes that repair or switch whatever the comparison finds, or that the play runs in
# steps: the whole play runs them.
_EVERY_PHASE = ("vllama_rollback", "vllama_run_bundle", "vllama_engine_override")
_TRUE_FLAGS = ("vllama_verify_store", "vllama_require_artifacts")


def run_mode_reason(task_vars, template=lambda value: value):
    """Why this run's mode needs the whole play on every host, or '' when a converged host may
    stop after the check."""
    if boolean(task_vars.get("ansible_check_mode", False), strict=False):
        return "a check-mode run"
    if boolean(task_vars.get("ansible_diff_mode", False), strict=False):
        return "a run that shows differences"
    if list(task_vars.get("ansible_run_tags") or ["all"]) != ["all"] or list(
            task_vars.get("ansible_skip_tags") or []):
        return "a run with tags"
    if str(task_vars.get("vllama_phase", "all") or "all") != "all":
        return "a rollout step"
    for name in _EVERY_PHASE:
        if task_vars.get(name) not in (None, "", {}, []):
            return f"a run with {name}"
    if template(task_vars.get("vllama_rotate_keys") or []):
        return "a key rotation"
    for name in _TRUE_FLAGS:
        if boolean(template(task_vars.get(name, False)), strict=False):
            return f"a run with {name}"
    return ""


def differences_reason(res):
    """Why the module's result does not show a converged host, or ''."""
    if res.get("failed"):
        return f"the comparison failed ({res.get('msg', '')})"
    if res.get("facts_changed"):
        return "its facts changed since the last run"
    if not res.get("acquired"):
        return "another run holds its lock"
    if res.get("differences") or res.get("phases") or res.get("models_to_check") or res.get(
            "exposed_keys"):
        return f"{len(res.get('differences') or []) or 'something'} difference(s)"
    return ""


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        require_package(VLLAMA_IMPORT_ERROR)
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        result.update(changed=False, converged=False)
        host = task_vars.get("inventory_hostname", "")
        reason = run_mode_reason(task_vars, self._templar.template)
        seen = None
        if not reason:
            source = task_vars.get("inventory_file")
            seen = fact_cache.load_seen(Path(source), host) if source else None
            if seen is None:
                reason = "no facts from an earlier run"
        planned = {}
        if not reason:
            plan_into(planned, task_vars, self._templar, seen, validate=True,
                      deployed_only=True, sources=True)
            if planned.get("failed"):
                reason = "its plan is refused or failed (the play says why)"
            elif not planned["plan"]["instances"]:
                reason = "it serves no instance"
        if not reason:
            reason = self._verify_reason(task_vars, host, planned["plan"])
        if reason:
            result["msg"] = f"checked by the whole play: {reason}"
            return result
        plan, sources = planned["plan"], planned["sources"]
        args = dict(self._task.args)
        module_args = {
            "desired": vllama_desired(plan, sources),
            "history": f"{plan['state_root']}/history.json",
            "key_digests": vllama_key_digests(plan, str(keys_dir() / host)),
            "lock": {"path": f"{plan['state_root']}/lock",
                     "owner": owner(task_vars, boot_id()), "replace_run_id": "",
                     "check_mode": False},
            "release": "always",
            "facts": {key: args.get(key) or "" for key in
                      ("pynvml_path", "sysfs_root", "macos_command_root")},
            "facts_digest": digest(seen),
        }
        res = self._execute_module(module_name=MODULE, module_args=module_args,
                                   task_vars=task_vars)
        facts = res.get("vllama_facts")
        if isinstance(facts, dict):
            result["vllama_facts"] = facts
            result["ansible_facts"] = {"vllama_facts": facts}
        reason = differences_reason(res)
        if reason:
            result["msg"] = f"checked by the whole play: {reason}"
            return result
        # The same results the play's plan and comparison would give, for the report.
        result["ansible_facts"].update(_vllama_plan=plan, _vllama_sources=sources)
        result.update(converged=True, plan=plan, instances=res.get("instances") or {},
                      differences=[], phases=[],
                      msg=f"matches its desired state ({len(plan['instances'])} instance(s))")
        return result

    @staticmethod
    def _verify_reason(task_vars, host, plan):
        """The play verifies on the host the instances the controller cannot reach."""
        if not boolean(task_vars.get("vllama_verify", True), strict=False):
            return ""
        reached = set((to_plain(task_vars.get("vllama_controller_verifies")) or {}).get(host)
                      or [])
        if any(inst["name"] not in reached for inst in plan["instances"]):
            return "the host verifies instances the controller cannot reach"
        return ""
