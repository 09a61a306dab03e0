"""The lab operations behind the CLI and the pytest fixtures: up, down, status, pause, resume."""

from __future__ import annotations

import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vllama_provision import paths
from vllama_provision.errors import LabError, UsageError
from vllama_provision.lab import addresses, cgroups, golden, host, inventory, snapshots, ssh
from vllama_provision.lab.state import (
    HostState,
    LabState,
    find_host,
    lab_dir,
    lab_names,
    labs_lock,
    load_or_none,
    validate_lab_name,
)
from vllama_provision.lab.system import file_lock, require_lab_machine

_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
_SIZE = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")
STOP_TIMEOUT = 30.0


def boot_timeout() -> float:
    return float(os.environ.get("VLLAMA_LAB_BOOT_TIMEOUT", "120"))


@dataclass
class UpOptions:
    """How ``lab up`` builds its new hosts (the CLI flags, one to one)."""

    count: int = 1
    lab: str = addresses.DEFAULT_LAB
    suite: str | None = None
    fuse: bool = False
    docker: bool = False
    isolated: bool = False
    models_size: str | None = None
    user: str | None = None
    inventory_out: Path | None = None
    from_snapshot: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    show_progress: bool = False  # print the golden image build's progress (it takes a minute)

    def validate(self) -> None:
        validate_lab_name(self.lab)
        if not 1 <= self.count <= addresses.HOSTS_PER_LAB:
            raise UsageError(f"a lab holds 1 to {addresses.HOSTS_PER_LAB} hosts, not {self.count}")
        if self.suite is not None and self.suite not in golden.SUITES:
            raise UsageError(f"suite {self.suite!r} is not supported; choose one of "
                             f"{', '.join(golden.SUITES)}")
        if self.user is not None and (not _USER.match(self.user) or self.user == "root"):
            raise UsageError(f"--user {self.user!r} is not a valid non-root user name")
        if self.models_size is not None and not _SIZE.match(self.models_size):
            raise UsageError(f"--models-size {self.models_size!r} is not a size like 64M or 2G")


def _lowers(opts: UpOptions) -> tuple[str, list[str]]:
    """The suite and lower layers (top first) new hosts boot from."""
    if opts.from_snapshot:
        snap = snapshots.load(opts.from_snapshot)
        if opts.suite and opts.suite != snap.suite:
            raise UsageError(f"snapshot {snap.name!r} is {snap.suite}, not {opts.suite}")
        if opts.user is None and snap.users:
            opts.user = snap.users[0]  # the snapshot's login user stays usable for `become`
        return snap.suite, snap.layers
    suite = opts.suite or golden.DEFAULT_SUITE
    return suite, [str(golden.ensure(suite, show=opts.show_progress))]


def _used_blocks(except_lab: str) -> set[int]:
    used = set()
    for name in lab_names():
        if name == except_lab:
            continue
        st = load_or_none(name)
        if st is not None:
            used.add(st.block)
    return used


def _allocate(opts: UpOptions, suite: str, lowers: list[str]) -> tuple[LabState, list[HostState]]:
    """Record the new hosts (block, indices, addresses) in the lab's state, under the lock."""
    with file_lock(labs_lock()):
        state = load_or_none(opts.lab)
        if state is None:
            if lab_dir(opts.lab).exists():
                raise LabError(f"lab {opts.lab!r} has a folder but no state: run `lab down --lab "
                               f"{opts.lab}` first")
            state = LabState(name=opts.lab, block=addresses.choose_block(
                opts.lab, _used_blocks(opts.lab)))
        taken = {h.index for h in state.hosts}
        free = [i for i in range(1, addresses.HOSTS_PER_LAB + 1) if i not in taken]
        if len(free) < opts.count:
            raise UsageError(f"lab {opts.lab!r} has {len(taken)} hosts; it can take "
                             f"{len(free)} more, not {opts.count}")
        new = [HostState(name=f"{opts.lab}-{i}", index=i,
                         address=addresses.address(state.block, i), suite=suite, lowers=lowers,
                         fuse=opts.fuse, docker=opts.docker, isolated=opts.isolated,
                         models_size=opts.models_size, user=opts.user,
                         snapshot=opts.from_snapshot)
               for i in free[:opts.count]]
        state.hosts.extend(new)
        state.save()
    return state, new


def _wait_ready(lab: str, new: list[HostState], timeout: float) -> None:
    deadline = time.monotonic() + timeout

    def one(h: HostState) -> str:
        proxy = host.HostPaths(lab, h.name).proxy if h.isolated else None
        last = ""
        while time.monotonic() < deadline:
            if host.state(lab, h.name) == "stopped":
                return "its systemd-nspawn exited"
            last = ssh.wait_login(h.address, proxy, min(deadline, time.monotonic() + 3))
            if not last:
                return ""
        return (f"sshd at {h.address} did not accept the lab key within {timeout:.0f}s "
                f"({last})")

    with ThreadPoolExecutor(max_workers=max(1, len(new))) as pool:
        problems = dict(zip([h.name for h in new], pool.map(one, new), strict=True))
    failed = {name: why for name, why in problems.items() if why}
    if failed:
        parts = [f"host {name} did not come up: {why}\n--- console log tail "
                 f"({host.HostPaths(lab, name).console}) ---\n{host.console_tail(lab, name)}"
                 for name, why in failed.items()]
        raise LabError("\n".join(parts))


def up(opts: UpOptions) -> LabState:
    """Boot ``opts.count`` new hosts in lab ``opts.lab`` and write its inventory.

    Returns once every new host accepts SSH logins; on failure the new hosts are removed again
    and a :class:`LabError` names the host and shows the tail of its console log.
    """
    require_lab_machine()
    opts.validate()
    suite, lowers = _lowers(opts)
    ssh.ensure_key()
    state, new = _allocate(opts, suite, lowers)
    try:
        with ThreadPoolExecutor(max_workers=min(8, len(new))) as pool:
            list(pool.map(lambda h: host.prepare(state.name, h), new))
        for h in new:
            host.start(state.name, h)
        for h in new:
            host.wait_started(state.name, h.name)
        _wait_ready(state.name, new, boot_timeout())
    except BaseException:
        _remove_hosts(state.name, [h.name for h in new])
        raise
    state = LabState.load(state.name)
    inventory.write(state, *([opts.inventory_out] if opts.inventory_out else []))
    return state


def _stop_hosts(lab: str, names: list[str]) -> None:
    for name in names:
        host.request_stop(lab, name)
    deadline = time.monotonic() + STOP_TIMEOUT
    errors = []
    for name in names:
        try:
            host.finish_stop(lab, name, deadline)
        except LabError as exc:
            errors.append(f"{name}: {exc}")
    if errors:
        raise LabError("cannot remove hosts:\n" + "\n".join(errors))


def _remove_hosts(lab: str, names: list[str]) -> None:
    """Stop and remove ``names`` and drop them from the lab; remove the lab when it is empty.
    The controller's copies of their API keys go too (the host and its keys are gone)."""
    _stop_hosts(lab, names)
    for name in names:
        shutil.rmtree(paths.keys_dir() / name, ignore_errors=True)
    with file_lock(labs_lock()):
        state = load_or_none(lab)
        if state is not None:
            state.hosts = [h for h in state.hosts if h.name not in names]
            if state.hosts:
                state.save()
                inventory.write(state)
                return
        _remove_lab_leftovers(lab)


def _remove_lab_leftovers(lab: str) -> None:
    cgroups.kill_all(lab)
    cgroups.remove(lab)
    for hier in cgroups.all_hierarchies():
        for rel in (cgroups.rel_path(lab), Path(cgroups.TOP)):
            try:
                os.rmdir(hier / rel)
            except OSError:
                break
    host.remove_tree_later(lab)


def down(lab: str = addresses.DEFAULT_LAB, hosts: list[str] | None = None) -> list[str]:
    """Remove hosts (all of the lab's by default); also cleans up after a killed run.

    Returns the names of the hosts removed. Never touches another lab.
    """
    require_lab_machine()
    validate_lab_name(lab)
    state = load_or_none(lab)
    folder_hosts = sorted(p.name for p in (lab_dir(lab) / "hosts").glob("*") if p.is_dir())
    known = sorted({*(h.name for h in state.hosts), *folder_hosts} if state else folder_hosts)
    if hosts:
        unknown = [h for h in hosts if h not in known]
        if unknown:
            raise UsageError(f"lab {lab!r} has no host {', '.join(unknown)} "
                             f"(hosts: {', '.join(known) or 'none'})")
        targets = list(hosts)
    else:
        targets = known
    _remove_hosts(lab, targets)
    return targets


@dataclass(frozen=True)
class HostStatus:
    lab: str
    name: str
    address: str
    state: str
    flags: list[str]


def status() -> list[HostStatus]:
    require_lab_machine()
    rows = []
    for name in lab_names():
        st = load_or_none(name)
        if st is None:
            rows.append(HostStatus(name, "-", "-", "broken (no lab.json: run lab down)", []))
            continue
        for h in sorted(st.hosts, key=lambda h: h.index):
            rows.append(HostStatus(name, h.name, h.address, host.state(name, h.name),
                                   [h.suite, *h.flags]))
    return rows


def pause(host_name: str, lab: str | None = None) -> None:
    require_lab_machine()
    st, h = find_host(host_name, lab)
    if host.state(st.name, h.name) == "stopped":
        raise LabError(f"host {h.name} is not running")
    cgroups.freeze(st.name, h.name)


def resume(host_name: str, lab: str | None = None) -> None:
    require_lab_machine()
    st, h = find_host(host_name, lab)
    if host.state(st.name, h.name) == "stopped":
        raise LabError(f"host {h.name} is not running")
    cgroups.freeze(st.name, h.name, frozen=False)


def snapshot(host_name: str, name: str, lab: str | None = None) -> snapshots.Snapshot:
    require_lab_machine()
    return snapshots.take(host_name, name, lab)


def ssh_command(host_name: str, lab: str | None = None, user: str = "root") -> list[str]:
    """The ``ssh`` argv (without a remote command) that logs into a lab host."""
    st, h = find_host(host_name, lab)
    proxy = host.HostPaths(st.name, h.name).proxy if h.isolated else None
    return ssh.ssh_argv(h.address, user=user, proxy_script=proxy)
