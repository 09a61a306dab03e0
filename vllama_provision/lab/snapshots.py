"""Snapshots: a provisioned host's upper layer, kept so new hosts can start from it.

``state_dir()/snapshots/<name>/upper`` is a copy of the host's overlay upper layer, taken while
the host is frozen (so the copy is consistent). ``snapshot.json`` remembers the layers the host
sat on, so a host started ``--from`` the snapshot gets ``upper : those layers`` as its lower
layers. Per-host identity is stripped from the copy and written fresh for every new host.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from vllama_provision.errors import LabError, UsageError
from vllama_provision.lab import cgroups, host
from vllama_provision.lab.state import (
    find_host,
    lab_names,
    load_or_none,
    snapshots_root,
    validate_snapshot_name,
)
from vllama_provision.lab.system import run

# Files that belong to one host and must not follow it into others.
IDENTITY = ("etc/machine-id", "etc/hostname", "etc/hosts", "var/lib/systemd/random-seed",
            "var/lib/dbus/machine-id", "etc/ssh/sshd_config.d/10-vllama-lab.conf")


@dataclass(frozen=True)
class Snapshot:
    name: str
    suite: str
    lowers: list[str]  # bottom layers the snapshot's upper sits on
    source: str
    users: list[str]

    @property
    def dir(self) -> Path:
        return snapshots_root() / self.name

    @property
    def layers(self) -> list[str]:
        """Lower layers for a host started from this snapshot (top first)."""
        return [str(self.dir / "upper"), *self.lowers]


def load(name: str) -> Snapshot:
    validate_snapshot_name(name)
    path = snapshots_root() / name / "snapshot.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"there is no snapshot {name!r} (take one with `lab snapshot HOST "
                         f"{name}`)") from None
    snap = Snapshot(name=name, suite=data["suite"], lowers=data["lowers"],
                    source=data["source"], users=data.get("users", []))
    missing = [layer for layer in snap.lowers if not Path(layer).is_dir()]
    if missing:
        raise LabError(f"snapshot {name!r} sits on layers that are gone: {', '.join(missing)}")
    return snap


def list_names() -> list[str]:
    root = snapshots_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "snapshot.json").is_file())


def take(host_name: str, name: str, lab: str | None = None) -> Snapshot:
    """Copy ``host_name``'s upper layer while it is frozen; the host runs on afterwards."""
    validate_snapshot_name(name)
    state, h = find_host(host_name, lab)
    current = host.state(state.name, h.name)
    if current != "running":
        raise LabError(f"host {h.name} is {current}: only a running host can be snapshotted")
    dest = snapshots_root() / name
    if dest.exists():
        raise UsageError(f"snapshot {name!r} already exists (remove it with `lab snapshot-rm "
                         f"{name}`)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    upper = host.HostPaths(state.name, h.name).upper
    run(["sync", "-f", upper], what="sync")
    cgroups.freeze(state.name, h.name)
    try:
        run(["cp", "-a", f"{upper}/.", tmp / "upper"], what=f"copy of {h.name}'s upper layer")
    except LabError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        cgroups.freeze(state.name, h.name, frozen=False)
    for rel in IDENTITY:
        (tmp / "upper" / rel).unlink(missing_ok=True)
    for key in (tmp / "upper/etc/ssh").glob("ssh_host_*"):
        key.unlink()
    users = sorted({*([h.user] if h.user else [])})
    (tmp / "snapshot.json").write_text(json.dumps(
        {"name": name, "suite": h.suite, "lowers": h.lowers, "source": f"{state.name}/{h.name}",
         "users": users, "taken": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
    tmp.rename(dest)
    return load(name)


def remove(name: str) -> None:
    validate_snapshot_name(name)
    path = snapshots_root() / name
    if not path.is_dir():
        raise UsageError(f"there is no snapshot {name!r}")
    layer = str(path / "upper")
    users = [f"host {h.name}" for lab in lab_names() if (st := load_or_none(lab))
             for h in st.hosts if layer in h.lowers]
    users += [f"snapshot {other}" for other in list_names()
              if other != name and layer in load(other).lowers]
    if users:
        raise UsageError(f"snapshot {name!r} is in use by {', '.join(users)}")
    shutil.rmtree(path)
