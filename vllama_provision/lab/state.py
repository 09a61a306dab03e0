"""What a lab remembers on the controller: ``state_dir()/labs/<lab>/lab.json`` and its hosts.

Layout::

    state_dir()/labs/id_ed25519              the lab key pair, shared by all labs
    state_dir()/labs/.lock                   taken while labs are created or removed
    state_dir()/labs/<lab>/lab.json          block, hosts and their flags
    state_dir()/labs/<lab>/inventory.yml     the Ansible inventory `lab up` writes
    state_dir()/labs/<lab>/hosts/<host>/     upper/ work/ merged/ console.log supervisor.pid ...
    state_dir()/snapshots/<name>/            upper/ and snapshot.json
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vllama_provision import paths
from vllama_provision.errors import LabError, UsageError

_LAB_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def labs_root() -> Path:
    return paths.state_dir() / "labs"


def snapshots_root() -> Path:
    return paths.state_dir() / "snapshots"


def labs_lock() -> Path:
    return labs_root() / ".lock"


def lab_dir(lab: str) -> Path:
    return labs_root() / lab


def validate_lab_name(name: str) -> str:
    if not _LAB_NAME.match(name):
        raise UsageError(f"lab name {name!r} is not valid: use 1-40 lowercase letters, digits and "
                         "dashes, starting and ending with a letter or digit (host names are "
                         "<lab>-<N>)")
    return name


def validate_snapshot_name(name: str) -> str:
    if not _SNAPSHOT_NAME.match(name):
        raise UsageError(f"snapshot name {name!r} is not valid: use letters, digits, '.', '_', '-'")
    return name


@dataclass
class HostState:
    """One host of a lab, as recorded when it was created."""

    name: str
    index: int
    address: str
    suite: str
    lowers: list[str]
    fuse: bool = False
    docker: bool = False
    isolated: bool = False
    models_size: str | None = None
    user: str | None = None
    snapshot: str | None = None

    @property
    def flags(self) -> list[str]:
        out = [f for f in ("fuse", "docker", "isolated") if getattr(self, f)]
        if self.models_size:
            out.append(f"models={self.models_size}")
        if self.user:
            out.append(f"user={self.user}")
        if self.snapshot:
            out.append(f"from={self.snapshot}")
        return out


@dataclass
class LabState:
    name: str
    block: int
    hosts: list[HostState] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return lab_dir(self.name)

    @property
    def state_file(self) -> Path:
        return self.dir / "lab.json"

    def host(self, name: str) -> HostState:
        for host in self.hosts:
            if host.name == name:
                return host
        raise UsageError(f"lab {self.name!r} has no host {name!r} "
                         f"(hosts: {', '.join(h.name for h in self.hosts) or 'none'})")

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.state_file)

    @classmethod
    def load(cls, name: str) -> LabState:
        path = lab_dir(name) / "lab.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"there is no lab {name!r} (see `vllama-provision lab status`)"
                             ) from None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {path}: {exc}") from exc
        hosts = [HostState(**h) for h in data.get("hosts", [])]
        return cls(name=data["name"], block=int(data["block"]), hosts=hosts)


def lab_names() -> list[str]:
    """Every lab with a folder, including half-created ones (a folder without lab.json)."""
    root = labs_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _LAB_NAME.match(p.name))


def load_or_none(name: str) -> LabState | None:
    try:
        return LabState.load(name)
    except UsageError:
        return None


def find_host(host: str, lab: str | None = None) -> tuple[LabState, HostState]:
    """The lab holding ``host`` (searching every lab unless ``lab`` is given)."""
    candidates = [lab] if lab else lab_names()
    for name in candidates:
        state = load_or_none(name)
        if state is None:
            continue
        for h in state.hosts:
            if h.name == host:
                return state, h
    where = f"lab {lab!r}" if lab else "any lab"
    raise UsageError(f"no host {host!r} in {where} (see `vllama-provision lab status`)")
