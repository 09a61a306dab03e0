"""``vllama-provision lab ...``: disposable Debian hosts (systemd-nspawn, SSH on loopback).

The main CLI adds the :func:`lab` group; ``python -m vllama_provision.lab.cli`` runs it alone.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from vllama_provision.cli_common import HelpGroup
from vllama_provision.errors import VllamaError
from vllama_provision.lab import addresses, golden, labs, snapshots
from vllama_provision.lab.host import HostPaths
from vllama_provision.lab.state import find_host
from vllama_provision.lab.system import require_lab_machine

F = TypeVar("F", bound=Callable[..., Any])


def _reported(func: F) -> F:
    """Turn a VllamaError into its message on stderr and its exit code (2: usage, 1: failure)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VllamaError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


LAB_OPTION = click.option("--lab", "lab_name", default=addresses.DEFAULT_LAB, show_default=True,
                          help="Lab name; labs are independent and have their own addresses.")


@click.group(name="lab", cls=HelpGroup)
def lab() -> None:
    """Disposable Debian lab hosts with systemd and sshd on 127.0.1.x (needs root, Linux)."""


@lab.command("up")
@click.argument("count", type=click.IntRange(1, addresses.HOSTS_PER_LAB))
@LAB_OPTION
@click.option("--suite", type=click.Choice(golden.SUITES), default=None,
              help="Debian suite [default: bookworm, or the snapshot's].")
@click.option("--fuse", is_flag=True, help="Pass /dev/fuse into the hosts (zfs-fuse).")
@click.option("--docker", is_flag=True, help="Allow a Docker engine inside the hosts.")
@click.option("--isolated", is_flag=True,
              help="Private network namespace with only loopback (reached via a ProxyCommand).")
@click.option("--models-size", metavar="SIZE",
              help="Size-limited filesystem at /tank/ai/models (e.g. 64M, 2G).")
@click.option("--user", metavar="USER", help="Add a login user with passwordless sudo.")
@click.option("--inventory-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the inventory here [the lab's inventory.yml is always written].")
@click.option("--from", "from_snapshot", metavar="SNAPSHOT",
              help="Start the hosts from a snapshot taken with `lab snapshot`.")
@_reported
def up_cmd(count: int, lab_name: str, suite: str | None, fuse: bool, docker: bool,
           isolated: bool, models_size: str | None, user: str | None,
           inventory_out: Path | None, from_snapshot: str | None) -> None:
    """Boot COUNT new hosts in a lab and write its Ansible inventory."""
    opts = labs.UpOptions(count=count, lab=lab_name, suite=suite, fuse=fuse, docker=docker,
                          isolated=isolated, models_size=models_size, user=user,
                          inventory_out=inventory_out, from_snapshot=from_snapshot,
                          show_progress=True)
    state = labs.up(opts)
    width = max([4, *(len(h.name) for h in state.hosts)])
    click.echo(f"{'HOST':<{width}}  {'ADDRESS':<13}  FLAGS", err=True)
    for h in state.hosts:
        click.echo(f"{h.name:<{width}}  {h.address:<13}  {' '.join(h.flags) or '-'}", err=True)
    inventory = inventory_out or state.dir / "inventory.yml"
    click.echo(f"lab {lab_name}: an inventory naming these hosts (connection details only; add "
               f"vllama_instances, as inventory/local.yml does for default-1) is printed below",
               err=True)
    click.echo(str(inventory))


@lab.command("down")
@LAB_OPTION
@click.argument("hosts", nargs=-1)
@_reported
def down_cmd(lab_name: str, hosts: tuple[str, ...]) -> None:
    """Remove a lab's hosts (all by default): processes, mounts, cgroups and folders."""
    removed = labs.down(lab_name, list(hosts) or None)
    if removed:
        click.echo(f"removed {', '.join(removed)} from lab {lab_name}")
    else:
        click.echo(f"lab {lab_name} is not up: nothing to remove")


@lab.command("status")
@_reported
def status_cmd() -> None:
    """Show labs, hosts, addresses, state (running/paused/stopped) and flags."""
    rows = labs.status()
    if not rows:
        click.echo("no lab is up")
    else:
        click.echo(f"{'LAB':<16} {'HOST':<20} {'ADDRESS':<13} {'STATE':<9} FLAGS")
        for r in rows:
            click.echo(f"{r.lab:<16} {r.name:<20} {r.address:<13} {r.state:<9} "
                       f"{' '.join(r.flags)}")
    names = snapshots.list_names()
    if names:
        click.echo("snapshots: " + ", ".join(names))


@lab.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("host")
@click.option("--lab", "lab_name", default=None, help="Lab of HOST [default: the one holding it].")
@click.option("--user", default="root", show_default=True)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_reported
def ssh_cmd(host: str, lab_name: str | None, user: str, command: tuple[str, ...]) -> None:
    """Log into HOST (or run COMMAND there: `lab ssh HOST -- CMD...`)."""
    argv = labs.ssh_command(host, lab_name, user=user)
    if command:
        argv += ["--", *command]
    else:
        argv.insert(1, "-t")
    os.execvp(argv[0], argv)


@lab.command("pause")
@click.argument("host")
@click.option("--lab", "lab_name", default=None, help="Lab of HOST [default: the one holding it].")
@_reported
def pause_cmd(host: str, lab_name: str | None) -> None:
    """Freeze HOST: it stops answering, as a host dropped off the network would."""
    labs.pause(host, lab_name)
    click.echo(f"{host} paused")


@lab.command("resume")
@click.argument("host")
@click.option("--lab", "lab_name", default=None, help="Lab of HOST [default: the one holding it].")
@_reported
def resume_cmd(host: str, lab_name: str | None) -> None:
    """Thaw a paused HOST."""
    labs.resume(host, lab_name)
    click.echo(f"{host} resumed")


@lab.command("snapshot")
@click.argument("host")
@click.argument("name")
@click.option("--lab", "lab_name", default=None, help="Lab of HOST [default: the one holding it].")
@_reported
def snapshot_cmd(host: str, name: str, lab_name: str | None) -> None:
    """Capture HOST's state as NAME, for `lab up --from NAME`."""
    snap = labs.snapshot(host, name, lab_name)
    click.echo(f"snapshot {snap.name} of {snap.source} in {snap.dir}")


@lab.command("snapshot-rm")
@click.argument("name")
@_reported
def snapshot_rm_cmd(name: str) -> None:
    """Delete snapshot NAME."""
    require_lab_machine()
    snapshots.remove(name)
    click.echo(f"snapshot {name} removed")


@lab.command("proxy", hidden=True)
@click.argument("host")
@click.option("--lab", "lab_name", default=None)
@_reported
def proxy_cmd(host: str, lab_name: str | None) -> None:
    """ProxyCommand for an isolated host (what its inventory's proxy script does)."""
    require_lab_machine()
    state, h = find_host(host, lab_name)
    script = HostPaths(state.name, h.name).proxy
    os.execv(str(script), [str(script)])


@lab.command("golden")
@click.option("--suite", type=click.Choice(golden.SUITES), default=golden.DEFAULT_SUITE,
              show_default=True)
@_reported
def golden_cmd(suite: str) -> None:
    """Build (if its recipe changed) the cached golden image and print its path."""
    click.echo(str(golden.ensure(suite, show=True)))


if __name__ == "__main__":
    lab()
