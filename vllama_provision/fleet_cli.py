"""Fleet commands: ``upgrade``, ``rollback`` and ``status`` (and the batch options of apply).

They share one procedure (vllama_provision.rollout): a fleet-wide preflight, then the new
releases prepared on every host at once, then switched batch by batch through the release
transaction, stopping once more hosts failed than ``--max-fail`` allows.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from vllama_provision.bundle.options import bundle_extravars, bundle_options
from vllama_provision.cli_common import (
    apply_like,
    batch_options,
    break_lock_option,
    controller_checks,
    finish,
    inventory_argument,
    json_option,
    limit_option,
    strategy_option,
    verbose_option,
)
from vllama_provision.errors import UsageError
from vllama_provision.report import Report
from vllama_provision.strategy import LINEAR, Strategy

ENGINES = ("llamacpp", "vllm")


def target_hosts(inventory: Path, limit: str | None,
                 engine: str | None = None) -> tuple[list[str], list[Any]]:
    """Validated hosts (inventory order), and those with an instance of ``engine`` (or all)."""
    from vllama_provision.inventory import load_inventory
    from vllama_provision.planner import plan_host

    inv = load_inventory(inventory, limit)  # bad input never reaches a host
    hosts = list(inv)
    if engine is None:
        return [h.name for h in hosts], hosts
    chosen = []
    for host in hosts:
        if not host.instances:
            continue  # a gateway host serving no model: nothing to upgrade
        plan = plan_host(host)
        if not plan.instances or any(i.engine == engine for i in plan.instances):
            # Without a platform in the inventory the engine is only known from facts: the
            # host is a target, its planner decides per instance.
            chosen.append(host)
    return [h.name for h in chosen], chosen


def rollout_cmd(command: str, inventory: Path, hosts: list[str], *, batch: str | None,
                max_fail: int, extravars: dict[str, Any], prepare: bool = True,
                prepare_only: bool = False, require_artifacts: bool = False, verbose: int = 0,
                break_lock: bool = False, strategy: Strategy = LINEAR) -> Report:
    from vllama_provision.releases import parse_batch
    from vllama_provision.rollout import Rollout, run_rollout

    parse_batch(batch)  # a bad --batch is a usage error before anything runs
    if not hosts:
        raise UsageError("no host matches: nothing to do")
    click.echo(f"{command}: {inventory} ({len(hosts)} host(s), batch {batch or 1}, "
               f"--max-fail {max_fail})", err=True)
    result = run_rollout(Rollout(
        command=command, inventory=inventory, hosts=hosts, batch=batch, max_fail=max_fail,
        extravars=extravars, prepare=prepare, prepare_only=prepare_only,
        require_artifacts=require_artifacts, verbose=verbose, break_lock=break_lock,
        strategy=strategy))
    controller_checks(result.report, {h: p for h, p in result.plans.items()
                                       if h in result.switched})
    return result.report


@click.command()
@inventory_argument
@click.option("--engine", "engine", required=True, type=click.Choice(ENGINES),
              help="The engine to upgrade.")
@click.option("--version", "versions", required=True, multiple=True,
              help="The engine version to roll out. Repeat it for a mixed fleet, one version "
                   "per server (llama-cpp-python's on Linux, xllamacpp's on Macs): each host "
                   "takes the one that is its server's.")
@limit_option
@batch_options
@click.option("--prepare-only", is_flag=True,
              help="Stop after preparing the new releases on every host (nothing switches).")
@click.option("--allow-downgrade", is_flag=True, help="Allow VERSION to be older than what a "
              "host runs.")
@click.option("--write-inventory", is_flag=True,
              help="After a complete rollout, set engine_version to VERSION in the inventory.")
@click.option("--check", is_flag=True, help="Dry run: show what each host would switch to.")
@break_lock_option
@json_option
@verbose_option
@bundle_options
@strategy_option
def upgrade(inventory: Path, engine: str, versions: tuple[str, ...], limit: str | None,
            batch: str | None,
            max_fail: int, prepare_only: bool, allow_downgrade: bool, write_inventory: bool,
            check: bool, break_lock: bool, json_out: str | None, verbose: int,
            bundle: Path | None, bundle_key: Path | None, strategy: Strategy) -> None:
    """Roll out engine VERSION to every instance of ENGINE, batch by batch.

    A fleet-wide preflight runs first (every host valid, every engine wheel available); then
    the new releases are prepared on all hosts at once; then hosts switch in batches, each
    through the release transaction: a host that fails is rolled back automatically, and the
    rollout stops once more hosts failed than --max-fail allows. With --bundle, everything is
    installed from a signed offline bundle (see `bundle`).
    """
    version = versions[0]
    extravars: dict[str, Any] = {"vllama_engine_override": {"engine": engine,
                                                            "version": version,
                                                            "versions": list(versions)}}
    if allow_downgrade:
        extravars["vllama_allow_downgrade"] = True
    names, hosts = target_hosts(inventory, limit, engine)
    extravars.update(bundle_extravars(bundle, bundle_key, inventory, limit))
    if check:
        report = apply_like("upgrade", inventory, ",".join(names), check=True, diff=False,
                             verbose=verbose, json_out=None, extravars=extravars, exit=False,
                             strategy=strategy)
        finish(report, json_out)
    report = rollout_cmd("upgrade", inventory, names, batch=batch, max_fail=max_fail,
                         extravars=extravars, prepare_only=prepare_only,
                         require_artifacts=True, verbose=verbose, break_lock=break_lock,
                         strategy=strategy)
    done = report.exit_code == 0 and not prepare_only
    if done:
        for each in versions:
            _inventory_edit(inventory, hosts, engine, each, report, write=write_inventory)
    elif write_inventory:
        why = "--prepare-only" if prepare_only else "the rollout did not complete"
        click.echo(f"inventory: not changed ({why}); {inventory} still names the version the "
                   "hosts ran before", err=True)
    finish(report, json_out)


def _inventory_edit(inventory: Path, hosts: list[Any], engine: str, version: str,
                    report: Report, *, write: bool) -> None:
    from vllama_provision.inventory_edit import set_engine_version

    targets = {(h.name, i.name) for h in hosts
               for i in report.host(h.name).instances
               if i.engine == engine and i.engine_version == version}
    names = sorted({inst for _host, inst in targets})
    if not names:
        return
    if write:
        edited, missing = set_engine_version(inventory, names, engine, version)
        for where in edited:
            click.echo(f"inventory: set engine_version: {version!r} at {where}", err=True)
        for name in missing:
            click.echo(f"inventory: instance {name!r} is not defined in {inventory}; set its "
                       f"engine_version: {version!r} where it is defined", err=True)
    else:
        click.echo(f"To make {engine} {version} the desired state, set `engine_version: "
                   f"{version!r}` on instance(s) {', '.join(names)} in {inventory} (or re-run "
                   "with --write-inventory).", err=True)


@click.command()
@inventory_argument
@limit_option
@click.option("--to", "to", metavar="RELEASE",
              help="Switch to this release instead of the previous one: an id, a unique "
                   "prefix, or an engine version (release ids differ between hosts, so a "
                   "fleet-wide --to names a version). A newer release rolls forward.")
@batch_options
@break_lock_option
@json_option
@verbose_option
@strategy_option
def rollback(inventory: Path, limit: str | None, to: str | None, batch: str | None,
             max_fail: int, break_lock: bool, json_out: str | None, verbose: int,
             strategy: Strategy) -> None:
    """Switch every instance back to its previous release (or to --to RELEASE).

    The same transaction as apply: switch, restart, verify. A rollback that fails verification
    is switched back to what served before, the host fails and the rollout stops (it never
    loops).
    """
    names, _hosts = target_hosts(inventory, limit)
    report = rollout_cmd("rollback", inventory, names, batch=batch, max_fail=max_fail,
                         extravars={"vllama_rollback": {"to": to or ""}}, prepare=False,
                         verbose=verbose, break_lock=break_lock, strategy=strategy)
    finish(report, json_out)


@click.command()
@inventory_argument
@limit_option
@json_option
@click.option("--metrics", "metrics", is_flag=True,
              help="Instead of asking the hosts, read the fleet's traffic from its Prometheus "
                   "(the vllama_monitoring group): per instance the request rate, 5xx share, "
                   "p50/p95 latency and tokens/s; '-' where no source can tell.")
@click.option("--window", "window", default="5m", show_default=True, metavar="DURATION",
              help="With --metrics: the range the rates are taken over (a Prometheus "
                   "duration).")
@strategy_option
def status(inventory: Path, limit: str | None, json_out: str | None, metrics: bool,
           window: str, strategy: Strategy) -> None:
    """What each host runs now: releases, engine, service, endpoint health, lock (read-only).

    With --metrics, what the fleet serves: read from Prometheus, nothing runs on the hosts; a
    host Prometheus does not scrape, or scrapes as down, fails (exit 1).
    """
    from vllama_provision.gateway import plan_inventory_gateways
    from vllama_provision.inventory import load_inventory
    from vllama_provision.planner import plan_host
    from vllama_provision.status import gather, render

    if metrics:
        _status_metrics(inventory, limit, json_out, window)
    names, hosts = target_hosts(inventory, limit)
    endpoints = {h.name: {i.name: i.endpoint for i in plan_host(h).instances} for h in hosts}
    gateways = {name: {m.backend: m.name for m in plan.models}
                for name, plan in plan_inventory_gateways(load_inventory(inventory)).items()
                if name in names}
    report = gather(inventory, names, endpoints, strategy=strategy, gateways=gateways)
    _emit(report, json_out, render)


def _status_metrics(inventory: Path, limit: str | None, json_out: str | None,
                    window: str) -> None:
    from vllama_provision import facts, metrics, monitoring
    from vllama_provision.gateway import plan_inventory_gateways
    from vllama_provision.inventory import load_inventory
    from vllama_provision.planner import plan_host

    metrics.check_window(window)
    _names, hosts = target_hosts(inventory, limit)
    inv = load_inventory(inventory)
    watchers = monitoring.plan_inventory_monitoring(inv)
    if not watchers:
        raise UsageError(f"status --metrics: {inventory} has no host in the group "
                         "vllama_monitoring, so no Prometheus watches this fleet (README, "
                         "'Monitoring')")
    plan = next(iter(watchers.values()))
    plans = {h.name: plan_host(h, facts.load(inventory, h.name)) for h in hosts}
    if not Path(plan.password_file).is_file():
        raise metrics.MetricsError(f"status --metrics: no password for Prometheus on "
                                   f"{plan.host} at {plan.password_file}; apply the monitoring "
                                   "host first")
    try:
        ask = metrics.prometheus_client(plan.endpoint, monitoring.password(plan),
                                        verify=monitoring.trust(plan))
    except monitoring.MonitoringSecretError as exc:
        raise metrics.MetricsError(str(exc)) from None
    report = metrics.collect(ask, hosts, plans, plan_inventory_gateways(inv), window,
                             plan.endpoint)
    _emit(report, json_out, metrics.render)


def _emit(report: Report, json_out: str | None, render: Any) -> None:
    if json_out:
        report.write_json(json_out)
    if json_out != "-":
        click.echo(render(report))
    sys.exit(report.exit_code)
