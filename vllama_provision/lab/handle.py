"""Lab handles for Python callers (the pytest fixtures, the benchmark): hosts with ``ssh()``."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vllama_provision.errors import LabError
from vllama_provision.lab import labs, snapshots
from vllama_provision.lab.state import HostState, LabState


@dataclass(frozen=True)
class LabHost:
    """One running lab host."""

    lab: str
    name: str
    address: str
    user: str | None = None
    isolated: bool = False

    def ssh_argv(self, user: str | None = None) -> list[str]:
        return labs.ssh_command(self.name, self.lab, user=user or "root")

    def ssh(self, cmd: str, check: bool = True, user: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (a shell command line) on the host as root (or ``user``)."""
        proc = subprocess.run([*self.ssh_argv(user), cmd], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise LabError(f"{self.name}: `{cmd}` exited {proc.returncode}\n"
                           f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}")
        return proc


@dataclass
class Lab:
    """A lab brought up through Python: its hosts, inventory and lifecycle."""

    name: str
    inventory_path: Path
    hosts: list[LabHost]
    snapshots_taken: list[str] = field(default_factory=list)

    @classmethod
    def from_state(cls, state: LabState, inventory_path: Path | None = None) -> Lab:
        return cls(name=state.name,
                   inventory_path=inventory_path or state.dir / "inventory.yml",
                   hosts=[_host(state.name, h) for h in sorted(state.hosts, key=lambda h: h.index)])

    @classmethod
    def up(cls, n: int = 1, *, lab: str, **options: object) -> Lab:
        """Bring up ``n`` hosts in lab ``lab``; ``options`` are :class:`labs.UpOptions` fields."""
        state = labs.up(labs.UpOptions(count=n, lab=lab, **options))  # type: ignore[arg-type]
        return cls.from_state(state)

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"lab {self.name} has no host {name}")

    def pause(self, name: str) -> None:
        labs.pause(name, self.name)

    def resume(self, name: str) -> None:
        labs.resume(name, self.name)

    def status(self, name: str) -> str:
        return next(r.state for r in labs.status() if r.lab == self.name and r.name == name)

    def snapshot(self, host: str, name: str) -> str:
        """Snapshot ``host`` as ``name`` (removed again by :meth:`forget_snapshots`)."""
        snap = labs.snapshot(host, name, self.name)
        self.snapshots_taken.append(snap.name)
        return snap.name

    def forget_snapshots(self) -> None:
        for name in reversed(self.snapshots_taken):
            if name in snapshots.list_names():
                snapshots.remove(name)
        self.snapshots_taken.clear()

    def down(self, *hosts: str) -> None:
        """Remove the named hosts (all by default)."""
        labs.down(self.name, list(hosts) or None)
        self.hosts = [h for h in self.hosts if hosts and h.name not in hosts]


def _host(lab: str, h: HostState) -> LabHost:
    return LabHost(lab=lab, name=h.name, address=h.address, user=h.user, isolated=h.isolated)
