"""Fleet rollouts: a fleet-wide preflight, then prepare everywhere, then switch in batches.

    preflight  every target host at once, read-only: valid, planned, artifacts available.
               Any refusal stops the rollout before a host is changed.
    prepare    every target host at once: engines installed, models staged, the new release
               folders written. Nothing serving changes.
    switch     batch by batch (default one host at a time): each host goes through the release
               transaction (switch, restart, verify; roll back on failure). Once more hosts
               failed than --max-fail allows, the rollout stops: hosts not yet switched stay
               untouched; hosts of the same batch finish their own transaction.

``upgrade``, ``rollback`` and ``apply --batch`` are this one procedure with different extra
variables (an engine version override, a rollback target, nothing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from vllama_provision.releases import batches
from vllama_provision.report import BAD_STATUSES, HostReport, Report
from vllama_provision.runner import Progress, RunRequest, RunResult, run_playbook, show_running
from vllama_provision.strategy import LINEAR, Strategy

EventHook = Callable[[dict[str, Any]], None]


@dataclass
class Rollout:
    command: str
    inventory: Path
    hosts: list[str]
    batch: str | None = None
    max_fail: int = 0
    extravars: dict[str, Any] = field(default_factory=dict)
    prepare: bool = True
    prepare_only: bool = False
    require_artifacts: bool = False
    verbose: int = 0
    break_lock: bool = False
    on_event: EventHook | None = None
    # One strategy for every phase of the rollout, chosen before it starts (never switched
    # after a failure).
    strategy: Strategy = LINEAR


@dataclass
class RolloutResult:
    report: Report
    stopped: bool = False
    switched: list[str] = field(default_factory=list)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    running: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)


def _run(rollout: Rollout, phase: str, hosts: list[str], progress: Progress,
         tags: list[str] | None = None, extra: dict[str, Any] | None = None) -> RunResult:
    request = RunRequest(
        playbook="site.yml", inventory=rollout.inventory, command=rollout.command,
        limit=",".join(hosts), verbosity=rollout.verbose, tags=tags or [],
        break_lock=rollout.break_lock, strategy=rollout.strategy,
        extravars={**rollout.extravars, "vllama_phase": phase, **(extra or {})})
    return run_playbook(request, progress=progress, on_event=rollout.on_event)


def _merge(into: Report, phase: str, result: RunResult) -> list[str]:
    """Fold one run's host entries into the rollout's report; return the hosts that failed."""
    failed = []
    for host, entry in result.report.hosts.items():
        merged = into.hosts.get(host)
        new = copy.deepcopy(entry)
        if merged is not None:
            new.changed += merged.changed
            new.notes = merged.notes + [n for n in new.notes if n not in merged.notes]
            known = {i.name for i in new.instances}
            new.instances += [i for i in merged.instances if i.name not in known]
            for inst in new.instances:
                before = next((i for i in merged.instances if i.name == inst.name), None)
                if before is not None and inst.verified is None:
                    inst.verified, inst.verified_from = before.verified, before.verified_from
        if new.status in BAD_STATUSES:
            new.phase = f"{phase}: {new.phase}" if new.phase else phase
            failed.append(host)
        into.hosts[host] = new
    return failed


def run_rollout(rollout: Rollout, progress: Progress | None = None) -> RolloutResult:
    progress = progress or Progress()
    report = Report(command=rollout.command)
    result = RolloutResult(report=report)
    hosts = list(rollout.hosts)
    echo = _echo(rollout.command)

    if rollout.prepare:
        echo(f"preflight on {len(hosts)} host(s), nothing is changed")
        pre = _run(rollout, "prepare", hosts, progress, tags=["vllama_preflight"],
                   extra={"vllama_require_artifacts": rollout.require_artifacts})
        result.plans.update(pre.plans)
        result.running.update(pre.running)
        bad = _merge(report, "preflight", pre)
        if bad:
            result.stopped = True
            _skip(result, [h for h in hosts if h not in bad],
                  f"not changed: the preflight failed on {', '.join(sorted(bad))}")
            return result
        echo(f"prepare on {len(hosts)} host(s): engines, models and release folders; "
             "nothing serving changes")
        prep = _run(rollout, "prepare", hosts, progress)
        result.plans.update(prep.plans)
        result.running.update(prep.running)
        bad = _merge(report, "prepare", prep)
        if len(bad) > rollout.max_fail:
            result.stopped = True
            _skip(result, [h for h in hosts if h not in bad],
                  f"prepared but not switched: preparing failed on {', '.join(sorted(bad))} "
                  f"(--max-fail {rollout.max_fail}); still on its previous release")
            return result
        hosts = [h for h in hosts if h not in bad]
        failures = len(bad)
        if rollout.prepare_only:
            for host in hosts:
                report.host(host).notes.append("prepared, not switched (--prepare-only)")
            return result
    else:
        failures = 0

    groups = batches(hosts, rollout.batch)
    for number, group in enumerate(groups, 1):
        echo(f"batch {number}/{len(groups)}: {', '.join(group)}")
        run = _run(rollout, "switch", group, progress)
        result.plans.update(run.plans)
        result.running.update(run.running)
        bad = _merge(report, "switch", run)
        result.switched += [h for h in group if h not in bad]
        failures += len(bad)
        if failures > rollout.max_fail:
            rest = [h for g in groups[number:] for h in g]
            if rest:
                result.stopped = True
                _skip(result, rest,
                      f"not switched: the rollout stopped after {failures} failed host(s) "
                      f"(--max-fail {rollout.max_fail}); still on its previous release")
                echo(f"stopped: {failures} failed host(s) > --max-fail {rollout.max_fail}; "
                     f"{len(rest)} host(s) left untouched")
            break
    return result


def _skip(result: RolloutResult, hosts: list[str], why: str) -> None:
    """Mark hosts the rollout leaves alone; they show the release they still run."""
    for host in hosts:
        entry = result.report.hosts.get(host) or HostReport()
        if entry.status not in BAD_STATUSES:
            entry.status = "skipped"
            show_running(entry, result.running.get(host))
        entry.notes.append(why)
        result.report.hosts[host] = entry


def _echo(command: str) -> Callable[[str], None]:
    def echo(text: str) -> None:
        click.echo(click.style(f"{command}: {text}", bold=True), err=True)
    return echo
