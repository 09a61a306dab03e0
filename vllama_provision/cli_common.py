"""What every command of the CLI shares: options, the command group, running a play, the
controller's own verification and the closing report.

``cli`` (the single-run commands) and ``fleet_cli`` (rollouts and status) both import this
module and never each other, so either can be loaded alone.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import click

from vllama_provision.report import Report

F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------------------ options ---


def inventory_argument(func: F) -> F:
    return click.argument("inventory", type=click.Path(dir_okay=False, path_type=Path))(func)


def limit_option(func: F) -> F:
    return click.option("--limit", "-l", metavar="PATTERN",
                        help="Only these hosts (an Ansible host pattern).")(func)


def json_option(func: F) -> F:
    return click.option("--json", "json_out", metavar="FILE",
                        help="Also write the report as JSON to FILE; '-' writes it to stdout "
                             "instead of the table.")(func)


def verbose_option(func: F) -> F:
    return click.option("-v", "--verbose", count=True,
                        help="Ansible verbosity (-v to -vvvv); secrets stay hidden.")(func)


def break_lock_option(func: F) -> F:
    return click.option("--break-lock", is_flag=True,
                        help="Replace a host lock held by a run that is gone (another "
                             "controller's, or one this tool cannot check).")(func)


def _choose_strategy(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from vllama_provision.strategy import choose, set_chosen

    chosen = choose(value)  # a forced Mitogen that cannot run: UsageError, exit 2
    set_chosen(chosen)  # every run this command starts, also those it does not name
    if chosen.warning:
        click.echo(click.style(f"warning: {chosen.warning}", fg="yellow"), err=True)
    if chosen.name != "linear" or (value or "linear") != "linear":
        click.echo(f"strategy: {chosen.ansible_name} ({chosen.why})", err=True)
    return chosen


def strategy_option(func: F) -> F:
    """--strategy auto|linear|mitogen (default: $VLLAMA_STRATEGY, else linear), resolved once
    into a vllama_provision.strategy.Strategy before anything runs."""
    return click.option("--strategy", "strategy", type=click.Choice(["auto", "linear", "mitogen"]),
                        envvar="VLLAMA_STRATEGY", default="linear", show_default=True,
                        show_envvar=True, callback=_choose_strategy,
                        help="Ansible strategy: the stock linear, Mitogen's (faster; needs the "
                             "`mitogen` extra), or auto (Mitogen when a tested release is "
                             "installed). A failed run is never retried under the other.")(func)


def change_options(func: F) -> F:
    """--check, --diff, --break-lock and -v: the options of every command that changes hosts."""
    func = break_lock_option(func)
    func = click.option("--check", is_flag=True,
                        help="Dry run: report what would change, change nothing.")(func)
    func = click.option("--diff", is_flag=True, help="Show the differences in changed files.")(
        func)
    return verbose_option(func)


def batch_options(func: F) -> F:
    """--batch and --max-fail, shared by apply, upgrade and rollback."""
    func = click.option("--max-fail", "max_fail", type=click.IntRange(min=0), default=0,
                        show_default=True,
                        help="Failed hosts tolerated before the rollout stops; hosts not yet "
                             "switched then stay untouched.")(func)
    return click.option("--batch", "batch", metavar="N|N%",
                        help="Hosts switched at a time (a number or a percentage of the "
                             "hosts).")(func)


# -------------------------------------------------------------------------- the group ---


def _first_sentence(text: str) -> str:
    paragraph = " ".join(text.strip().split("\n\n", 1)[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[:end + 1]


class HelpGroup(click.Group):
    """A command group whose listing shows each command's whole first sentence (wrapped, never
    cut with "..."), and whose `lazy` commands are imported only when they are used."""

    lazy: ClassVar[dict[str, tuple[str, str]]] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, attr = self.lazy[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            rows.append((name, command.short_help or _first_sentence(command.help or "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# --------------------------------------------------------------------- runs and reports ---


def finish(report: Report, json_out: str | None, table: bool = True) -> None:
    """Print the report (or only write it to stdout with `--json -`), then exit with its code."""
    if json_out:
        report.write_json(json_out)
    if table and json_out != "-":
        click.echo(report.table())
        for host, entry in sorted(report.hosts.items()):
            for note in entry.notes:
                click.echo(f"{host}: note: {note}")
            for inst in entry.instances:
                if inst.answer:
                    click.echo(f"{host}/{inst.name} answered: {inst.answer}")
    sys.exit(report.exit_code)


def apply_like(command: str, inventory: Path, limit: str | None, *, check: bool, diff: bool,
               verbose: int, json_out: str | None, tags: list[str] | None = None,
               playbook: str = "site.yml", exit: bool = True, break_lock: bool = False,
               extravars: dict[str, Any] | None = None, strategy: Any = None) -> Report:
    """Validate the inventory, run one play over the hosts, verify from here, report."""
    from vllama_provision.inventory import load_inventory
    from vllama_provision.runner import Progress, RunRequest, run_playbook

    load_inventory(inventory, limit)  # bad input never reaches a host
    extravars = dict(extravars or {})
    if not check and playbook == "site.yml":
        from vllama_provision.verify import reachable_endpoints

        # Instances of a host the run leaves unchanged are verified from here after the run
        # (all at once) where this controller reaches them; the role verifies the others.
        extravars["vllama_controller_verifies"] = reachable_endpoints(inventory, limit)
    request = RunRequest(playbook=playbook, inventory=inventory, command=command, limit=limit,
                         check=check, diff=diff, verbosity=verbose, tags=tags or [],
                         break_lock=break_lock, extravars=extravars)
    if strategy is not None:
        request.strategy = strategy
    mode = " (check mode: nothing is changed)" if check else ""
    click.echo(f"{command}: {inventory}{mode}", err=True)
    result = run_playbook(request, progress=Progress(), on_event=diff_printer(diff))
    report = result.report
    if not check:
        controller_checks(report, result.plans)
    if exit:
        finish(report, json_out)
    return report


def diff_printer(enabled: bool) -> Callable[[dict[str, Any]], None] | None:
    """An event handler printing the file differences of `--diff` (None when not asked)."""
    if not enabled:
        return None

    def show(event: dict[str, Any]) -> None:
        data = event.get("event_data") or {}
        res = data.get("res") or {}
        diffs = res.get("diff")
        if event.get("event") != "runner_on_ok" or not diffs:
            for item in res.get("results") or []:
                if isinstance(item, dict) and item.get("diff"):
                    _echo_diff(data.get("host", ""), item["diff"])
            return
        _echo_diff(data.get("host", ""), diffs)

    return show


def _echo_diff(host: str, diffs: Any) -> None:
    for diff in diffs if isinstance(diffs, list) else [diffs]:
        before, after = diff.get("before"), diff.get("after")
        if not isinstance(before, str) or not isinstance(after, str) or before == after:
            continue
        lines = difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True),
            fromfile=f"{host}:{diff.get('before_header', 'before')}",
            tofile=f"{host}:{diff.get('after_header', 'after')}")
        click.echo("".join(lines), err=True)


def controller_checks(report: Report, plans: dict[str, dict[str, Any]]) -> None:
    """Verify from the controller, all at once, with each host's `vllama_verify_prompt`: every
    instance its host verified (a second opinion), and every instance of a host that ended ok
    without verifying it (nothing changed there: this is its verification, and a failure fails
    the host)."""
    from vllama_provision.verify import verify_all

    targets = []
    for host, plan in sorted(plans.items()):
        entry = report.host(host)
        for inst in plan.get("instances") or []:
            item = entry.instance(inst["name"])
            unverified = item.verified is None and entry.status in ("ok", "changed")
            if item.verified or unverified:
                targets.append((host, inst, plan.get("verify_prompt") or DEFAULT_PROMPT))
    for (host, name), check in verify_all(targets).items():
        entry = report.host(host)
        item = entry.instance(name)
        first = item.verified is None
        if check.verified:
            item.verified_from = sorted({*item.verified_from, "controller"})
            item.extra["controller_answer"] = check.answer
            if first:
                item.verified = True
                item.answer, item.ttft_ms, item.tokens_per_s = (check.answer, check.ttft_ms,
                                                                check.tokens_per_s)
        elif first:
            item.verified = False
            entry.status = "failed"
            entry.failed_task = "Verify every endpoint from the controller."
            entry.error = "; ".join(p for p in (entry.error, f"{name}: {check.detail}") if p)
        else:
            click.echo(f"  {host} {name}: not verified from the controller: {check.detail}",
                       err=True)


DEFAULT_PROMPT = "What is the capital of France?"
