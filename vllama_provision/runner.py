"""Driving the playbooks through ansible-runner and reading its event stream (never its stdout).

Each event updates the run's Report (status, changed count, failed task, instances) and the
live progress printer, so what the table says at the end is what Ansible reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from vllama_provision import facts as facts_cache
from vllama_provision import paths
from vllama_provision.errors import RunError
from vllama_provision.report import HostReport, Report
from vllama_provision.strategy import LINEAR, Strategy, chosen

# Actions whose results carry the tool's own data.
_PLAN_ACTION = "vllama_plan"
_VERIFY_ACTION = "vllama_verify"
_FACTS_ACTION = "vllama_host_facts"
_RELEASE_ACTION = "vllama_release"
_STATE_ACTION = "vllama_state"
# The converged check before the play: for a converged host, its plan and comparison.
_CONVERGED_ACTION = "vllama_converged"
_GATEWAY_PLAN_ACTION = "vllama_gateway_plan"
_HAPROXY_ACTION = "vllama_haproxy"
# Tasks whose failure is a refusal (nothing changed yet) start with this word.
REFUSAL_PREFIX = "Refuse "


@dataclass
class RunRequest:
    playbook: str
    inventory: Path
    command: str
    limit: str | None = None
    check: bool = False
    diff: bool = False
    verbosity: int = 0
    tags: list[str] = field(default_factory=list)
    extravars: dict[str, Any] = field(default_factory=dict)
    break_lock: bool = False
    forks: int = 10
    # Chosen once by the CLI (vllama_provision.strategy); a run that fails is never retried
    # under the other strategy.
    strategy: Strategy = field(default_factory=chosen)


@dataclass
class RunResult:
    report: Report
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    # HOST -> INSTANCE -> (release, engine version) the host runs, as the run last saw it.
    running: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    artifacts: Path | None = None
    rc: int = 0


def _phase(event_data: dict[str, Any]) -> str:
    """The phase a task belongs to: its task file (preflight, install, configure, run...), or
    the role for a role's main task file (base, facts)."""
    task_path = Path(str(event_data.get("task_path") or "").split(":")[0])
    if "tasks" in task_path.parts and task_path.stem != "main":
        return task_path.stem
    role = str(event_data.get("role") or "")
    return role.removeprefix("vllama_") or "play"


def _error_text(res: dict[str, Any]) -> str:
    """The failure's message; for a loop, the messages of the items that failed."""
    items = [r for r in res.get("results") or [] if isinstance(r, dict) and r.get("failed")]
    if items:
        return "; ".join(_error_text(r) for r in items)[:2000]
    message = res.get("msg") or res.get("stderr") or res.get("reason") or ""
    if isinstance(message, list):
        message = "; ".join(map(str, message))
    text = str(message).strip()
    return text[:2000]


# The role's phases: each is shown as it starts; other task files (facts, base, a role's main
# tasks) are named only when something happens in them.
PHASES = ("preflight", "install", "configure", "run")


class Progress:
    """Live output of a run: per host, each phase as it starts and every task that changed,
    failed or was refused; what merely confirmed the state is counted, and what does not apply
    to the host (skipped tasks, by role) is summarised on one line when the host is done."""

    def __init__(self, enabled: bool = True, stream: Any = None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.counts: dict[str, dict[str, int]] = {}
        self.phases: dict[str, str] = {}
        self.skipped_roles: dict[str, dict[str, int]] = {}

    def _echo(self, text: str) -> None:
        if self.enabled:
            click.echo(text, err=True)

    def result(self, host: str, phase: str, task: str, outcome: str,
               role: str = "") -> None:
        counts = self.counts.setdefault(host, {"ok": 0, "changed": 0, "failed": 0,
                                               "skipped": 0})
        if outcome in counts:
            counts[outcome] += 1
        if outcome == "changed":
            counts["ok"] += 1
        if outcome == "skipped":
            where = role or phase or "play"
            roles = self.skipped_roles.setdefault(host, {})
            roles[where] = roles.get(where, 0) + 1
            return
        if phase in PHASES and self.phases.get(host) != phase:
            self._phase(host, phase)
        if outcome in ("ok",):
            return
        if phase and self.phases.get(host) != phase:
            self._phase(host, phase)
        colour = {"changed": "yellow", "failed": "red", "unreachable": "red",
                  "refused": "red"}.get(outcome)
        label = click.style(f"{outcome:<11}", fg=colour) if colour else f"{outcome:<11}"
        self._echo(f"  {host:<16}   {label} {task}")

    def _phase(self, host: str, phase: str) -> None:
        self.phases[host] = phase
        self._echo(f"  {host:<16} [{phase}]")

    def note(self, host: str, text: str) -> None:
        """A line about the host that is not a task's outcome (what differs from its state)."""
        self._echo(f"  {host:<16}   {text}")

    def finish(self) -> None:
        """One closing line per host: its counts and what did not apply to it."""
        for host, counts in sorted(self.counts.items()):
            line = f"  {host:<16} done: {counts['ok']} ok, {counts['changed']} changed"
            skipped = self.skipped_roles.get(host) or {}
            if skipped:
                parts = ", ".join(f"{role} {n}" for role, n in sorted(skipped.items()))
                line += f"; {counts['skipped']} task(s) not applicable here ({parts})"
            self._echo(line)


class EventHandler:
    def __init__(self, result: RunResult, progress: Progress,
                 on_event: Callable[[dict[str, Any]], None] | None = None):
        self.result = result
        self.progress = progress
        self.on_event = on_event
        self.seen_hosts: set[str] = set()
        # What each host runs, from the run's last inspection of its releases (the first one,
        # and those after a switch or rollback).
        self.running = result.running
        self.finished = False  # the playbook_on_stats event: the play ran to its end
        # HOST -> {backend: served name} of its gateway, to report servers by model.
        self._gateway_backends: dict[str, dict[str, str]] = {}

    def __call__(self, event: dict[str, Any]) -> bool:
        try:
            self._handle(event)
        finally:
            if self.on_event is not None:
                self.on_event(event)
        return True

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        if kind == "playbook_on_stats":
            self.finished = True
            self.progress.finish()
        data = event.get("event_data") or {}
        host = data.get("host")
        if not host or not kind.startswith("runner_on_"):
            return
        report = self.result.report.host(host)
        self.seen_hosts.add(host)
        res = data.get("res") or {}
        task = str(data.get("task") or "")
        phase = _phase(data)
        role = str(data.get("role") or "")
        action = str(data.get("task_action") or "")
        report.phase = phase or report.phase
        if kind == "runner_on_ok":
            changed = bool(res.get("changed"))
            if changed:
                report.changed += 1
                if report.status == "ok":
                    report.status = "changed"
            self._collect(host, action, res)
            self.progress.result(host, phase, task, "changed" if changed else "ok")
        elif kind == "runner_on_failed":
            if data.get("ignore_errors"):
                self.progress.result(host, phase, task, "ignored")
                return
            # A refusal changes nothing: modules say so (vllama_refused), and so do the role's
            # checks named "Refuse ..." (asserts cannot add a field to their result).
            refused = bool(res.get("vllama_refused")) or task.startswith(REFUSAL_PREFIX)
            report.status = "refused" if refused else "failed"
            report.failed_task = task
            report.error = _error_text(res)
            self._collect(host, action, res)
            self.progress.result(host, phase, task, "refused" if refused else "failed")
        elif kind == "runner_on_unreachable":
            report.status = "unreachable"
            report.failed_task = task
            report.error = _error_text(res)
            self.progress.result(host, phase, task, "unreachable")
        elif kind == "runner_on_skipped":
            self.progress.result(host, phase, task, "skipped", role)

    def settle(self) -> None:
        """After the run: a host that failed or was refused shows what it runs now (as last
        inspected: before any change, or after the run's switch or rollback), not the planned
        release; the plan stays in each instance's ``planned_release`` and
        ``planned_engine_version``."""
        for host, entry in self.result.report.hosts.items():
            if entry.status in ("failed", "refused"):
                show_running(entry, self.running.get(host))

    def _collect(self, host: str, action: str, res: dict[str, Any]) -> None:
        short = action.rsplit(".", 1)[-1]
        report = self.result.report.host(host)
        if short == _CONVERGED_ACTION and res.get("converged"):
            self._collect(host, _PLAN_ACTION, res)
            self._collect(host, _STATE_ACTION, res)
            self.progress.note(host, "matches its desired state: nothing else runs")
        elif short == _PLAN_ACTION and isinstance(res.get("plan"), dict):
            plan = res["plan"]
            self.result.plans[host] = plan
            for inst in plan.get("instances") or []:
                item = report.instance(inst["name"])
                item.extra["planned_release"] = inst["release"]
                item.extra["planned_engine_version"] = inst["engine_version"]
                item.engine = inst["engine"]
                item.engine_version = inst["engine_version"]
                item.deploy = inst["deploy"]
                item.release = inst["release"]
                item.endpoint = inst["endpoint"]
                item.served_name = inst["served_name"]
        elif short == _VERIFY_ACTION:
            for inst in res.get("instances") or []:
                item = report.instance(inst["name"])
                item.verified = bool(inst.get("verified"))
                if inst.get("verified_from"):
                    item.verified_from = list(inst["verified_from"])
                for key in ("ttft_ms", "tokens_per_s", "answer"):
                    if inst.get(key) is not None:
                        setattr(item, key, inst[key])
        elif short == _RELEASE_ACTION:
            if isinstance(res.get("instances"), dict) and (host not in self.running
                                                           or res.get("report_releases")):
                self.running[host] = _now_running(res["instances"])
            for name, release in (res.get("report_releases") or {}).items():
                report.instance(name).release = release
            if res.get("removed"):
                report.notes.append(f"removed {len(res['removed'])} unreferenced release(s), "
                                    f"engine(s) or model copies, freed "
                                    f"{int(res.get('freed_bytes') or 0) / 2**20:.0f} MiB")
        elif short == _STATE_ACTION and isinstance(res.get("instances"), dict):
            if host not in self.running:
                self.running[host] = _now_running(res["instances"])
            differences = list(res.get("differences") or [])
            report.extra["differences"] = differences
            report.extra["phases"] = list(res.get("phases") or [])
            for text in differences:
                self.progress.note(host, f"differs: {text}")
            for path in sorted({Path(p).with_suffix("").as_posix()
                                for p in res.get("exposed_keys") or []}):
                report.notes.append(
                    f"the key file {path}.key/.env was readable by others (its mode is "
                    "repaired); treat the key as exposed and rotate it: vllama-provision key "
                    f"rotate INVENTORY {host} {Path(path).name}")
        elif short == _FACTS_ACTION and isinstance(res.get("vllama_facts"), dict):
            self.result.facts[host] = res["vllama_facts"]
        elif short == _GATEWAY_PLAN_ACTION and isinstance(res.get("gateway"), dict):
            gateway = res["gateway"]
            report.extra["gateway"] = {
                "endpoint": gateway["endpoint"], "keys": [k["name"] for k in gateway["keys"]],
                "models": {m["name"]: [f"{u['host']}/{u['instance']}" for u in m["upstreams"]]
                           for m in gateway["models"]}}
            self._gateway_backends[host] = {m["backend"]: m["name"] for m in gateway["models"]}
            report.notes += [f"gateway: {c['message']}" for c in gateway["checks"]
                             if c["level"] in ("warn", "not-evaluated")]
        elif short == _HAPROXY_ACTION and isinstance(res.get("results"), list):
            # A drain on each gateway (delegated): which of this host's models had a gap.
            by_id = {v: k for k, v in ((self.result.plans.get(host) or {}).get("gateways")
                                       or {}).get("servers", {}).items()}
            served = {i["name"]: i["served_name"]
                      for i in (self.result.plans.get(host) or {}).get("instances") or []}
            for item in res["results"]:
                for uid in item.get("gaps") or []:
                    name = served.get(by_id.get(uid, ""), uid)
                    note = (f"gateway {item.get('item')}: {name!r} had no other instance "
                            "in service while this host switched (a gap)")
                    if note not in report.notes:
                        report.notes.append(note)
        elif short == _HAPROXY_ACTION and isinstance(res.get("servers"), dict):
            names = self._gateway_backends.get(host, {})
            report.extra.setdefault("gateway", {})["servers"] = {
                names.get(backend, backend): members
                for backend, members in res["servers"].items()}
            for backend in res.get("down") or []:
                report.notes.append(f"gateway: no instance of {names.get(backend, backend)!r} "
                                    "is up")
        if res.get("stale_lock"):
            report.notes.append(str(res.get("msg")))
        facts = (res.get("ansible_facts") or {}).get("vllama_facts")
        if isinstance(facts, dict):
            self.result.facts[host] = facts


def show_running(entry: HostReport, running: dict[str, tuple[str, str]] | None) -> None:
    """Make a host's instances show the release and engine version it runs (when known)."""
    if running is None:
        return
    for item in entry.instances:
        item.release, item.engine_version = running.get(item.name, ("", ""))


def _now_running(instances: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """INSTANCE -> (current release, its engine version) from a release inspect result."""
    running = {}
    for name, inst in instances.items():
        current = inst.get("current") or ""
        record = next((r for r in inst.get("releases") or [] if r.get("id") == current), {})
        running[name] = (current, str(record.get("engine_version", "")))
    return running


def _run_dir(command: str) -> Path:
    root = paths.state_dir() / "runs"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    run = root / f"{stamp}-{os.getpid()}-{command.replace(' ', '-')}"
    run.mkdir(mode=0o700)
    _prune_runs(root, keep=20)
    return run


def _prune_runs(root: Path, keep: int) -> None:
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def ansible_env(strategy: Strategy = LINEAR) -> dict[str, str]:
    """Environment for every Ansible process the tool starts (with ``strategy``'s variables:
    ANSIBLE_STRATEGY, and for Mitogen its plugin folder)."""
    bindir = str(Path(sys.executable).parent)
    return {
        **strategy.env(),
        "ANSIBLE_CONFIG": str(paths.ansible_cfg()),
        # The roles and plugins are the collection vllama.provision (called by their FQCNs).
        "ANSIBLE_COLLECTIONS_PATH": str(paths.collections_dir()),
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "VLLAMA_TEMPLATES_DIR": str(paths.templates_dir()),
        # The watchdog callback (vllama.provision.vllama_watchdog, enabled by ansible.cfg)
        # stops the run when this process dies.
        "VLLAMA_CLI_PID": str(os.getpid()),
        # The role keeps the controller's private key copies and fetched wheels here.
        "VLLAMA_STATE_DIR": str(paths.state_dir()),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent) + os.pathsep
        + os.environ.get("PYTHONPATH", ""),
    }


def run_playbook(request: RunRequest, *, progress: Progress | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """Run one playbook and return the report built from its events."""
    import ansible_runner

    playbook = paths.playbooks_dir() / request.playbook
    if not playbook.is_file():
        raise RunError(f"playbook {playbook} is missing from this installation")
    result = RunResult(report=Report(command=request.command))
    handler = EventHandler(result, progress or Progress(), on_event)
    run_dir = _run_dir(request.command)
    cmdline = []
    if request.check:
        cmdline.append("--check")
    if request.diff:
        cmdline.append("--diff")
    if request.tags:
        cmdline += ["--tags", ",".join(request.tags)]
    verbose_echo = request.verbosity > 0

    def status_handler(data: dict[str, Any], runner_config: Any = None) -> None:
        return None

    def event_with_echo(event: dict[str, Any]) -> bool:
        if verbose_echo and event.get("stdout"):
            click.echo(event["stdout"], err=True)
        return handler(event)

    extravars = {"vllama_run_id": f"{run_dir.name}-{uuid.uuid4().hex[:8]}",
                 "vllama_run_command": f"vllama-provision {request.command}",
                 "vllama_inventory_sha256": hashlib.sha256(
                     request.inventory.read_bytes()).hexdigest(),
                 **request.extravars}
    if request.break_lock:
        extravars["vllama_break_lock"] = True
    try:
        runner = ansible_runner.run(
            private_data_dir=str(run_dir), playbook=str(playbook),
            inventory=str(request.inventory.resolve()), limit=request.limit,
            cmdline=" ".join(cmdline) or None, extravars=extravars,
            envvars=ansible_env(request.strategy), event_handler=event_with_echo,
            status_handler=status_handler, quiet=True, verbosity=request.verbosity or None,
            forks=request.forks, project_dir=str(paths.playbooks_dir()),
            # Facts live for one run (the role gathers its own every time): ansible-runner's
            # default JSON file cache would be read back from disk for every host and task.
            fact_cache_type="memory", suppress_env_files=True)
    except Exception as exc:  # ansible-runner raises plain exceptions for setup problems
        raise RunError(f"could not start Ansible: {exc}") from exc
    result.artifacts = Path(runner.config.artifact_dir) if runner.config else None
    result.rc = int(runner.rc or 0)
    if runner.status in ("failed", "timeout", "canceled") and not handler.seen_hosts:
        tail = ""
        try:
            tail = "\n".join(runner.stdout.read().splitlines()[-15:])
        except (OSError, ValueError, AttributeError):
            tail = ""
        raise RunError(f"Ansible {runner.status} before reaching any host:\n{tail}")
    if not handler.finished:
        # ansible-playbook died before the end of the play (killed, crashed): no host that
        # looked fine so far can be reported as done.
        for host in handler.seen_hosts:
            entry = result.report.host(host)
            if entry.status not in ("failed", "refused", "unreachable"):
                entry.status = "failed"
                entry.error = (f"the Ansible run ended before the play finished "
                               f"(status {runner.status}, rc {runner.rc})")
    handler.settle()
    for host, facts in result.facts.items():
        # The next run's converged check plans from them (vllama_converged).
        with contextlib.suppress(OSError):
            facts_cache.save_seen(request.inventory, host, facts)
    return result
