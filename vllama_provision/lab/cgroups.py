"""Each lab host's own cgroups, so hosts do not share one and can be frozen and cleaned up.

Without systemd as the machine's init, systemd-nspawn puts every container into ``<own
cgroup>/payload``: the supervisor therefore first moves itself into
``vllama-lab/<lab>/<host>`` of the ``name=systemd`` and cgroup2 hierarchies (and of the v1
``freezer``, used by ``lab pause``). On a pure cgroup2 machine the same path lives in the single
hierarchy and ``cgroup.freeze`` does the freezing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from vllama_provision.errors import LabError

CGROUP_ROOT = Path("/sys/fs/cgroup")
TOP = "vllama-lab"


def _is_cgroup2(path: Path) -> bool:
    return (path / "cgroup.controllers").exists()


def hierarchies() -> list[Path]:
    """The mounted hierarchies a host joins: name=systemd, cgroup2 and the v1 freezer."""
    if _is_cgroup2(CGROUP_ROOT):
        return [CGROUP_ROOT]
    found = [CGROUP_ROOT / name for name in ("systemd", "unified", "freezer")]
    return [p for p in found if (p / "cgroup.procs").exists()]


def all_hierarchies() -> list[Path]:
    """Every mounted hierarchy (for clean-up: nothing of a lab may stay in any of them)."""
    if _is_cgroup2(CGROUP_ROOT):
        return [CGROUP_ROOT]
    if not CGROUP_ROOT.is_dir():
        return []
    return sorted(p for p in CGROUP_ROOT.iterdir() if (p / "cgroup.procs").exists())


def rel_path(lab: str, host: str | None = None) -> Path:
    return Path(TOP, lab, host) if host else Path(TOP, lab)


def join(lab: str, host: str, pid: int = 0) -> None:
    """Move ``pid`` (0: the caller) into the host's cgroup in every hierarchy it uses."""
    pid = pid or os.getpid()
    for hier in hierarchies():
        path = hier / rel_path(lab, host)
        path.mkdir(parents=True, exist_ok=True)
        (path / "cgroup.procs").write_text(f"{pid}\n")


def pids(lab: str, host: str | None = None) -> set[int]:
    """Every process in the host's (or the whole lab's) cgroups, in any hierarchy."""
    found: set[int] = set()
    for hier in all_hierarchies():
        base = hier / rel_path(lab, host)
        if not base.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(base):
            if "cgroup.procs" in files:
                try:
                    text = Path(dirpath, "cgroup.procs").read_text()
                except OSError:
                    continue
                found.update(int(x) for x in text.split())
    return found


def existing(lab: str, host: str | None = None) -> list[Path]:
    return [hier / rel_path(lab, host) for hier in all_hierarchies()
            if (hier / rel_path(lab, host)).is_dir()]


def _freezer_v1(lab: str, host: str) -> Path | None:
    path = CGROUP_ROOT / "freezer" / rel_path(lab, host)
    return path if (path / "freezer.state").exists() else None


def freeze(lab: str, host: str, frozen: bool = True, timeout: float = 10.0) -> None:
    """Freeze (or thaw) every process of the host, as a host dropped off the network."""
    v1 = _freezer_v1(lab, host)
    if v1 is not None:
        (v1 / "freezer.state").write_text("FROZEN\n" if frozen else "THAWED\n")
        want = "FROZEN" if frozen else "THAWED"
        deadline = time.monotonic() + timeout
        while (v1 / "freezer.state").read_text().strip() != want:
            if time.monotonic() > deadline:
                raise LabError(f"host {host}: freezer stuck in "
                               f"{(v1 / 'freezer.state').read_text().strip()}")
            time.sleep(0.05)
        return
    v2 = CGROUP_ROOT / rel_path(lab, host)
    if (v2 / "cgroup.freeze").exists():
        (v2 / "cgroup.freeze").write_text("1\n" if frozen else "0\n")
        return
    raise LabError(f"host {host}: no freezer cgroup (is it running?)")


def is_frozen(lab: str, host: str) -> bool:
    v1 = _freezer_v1(lab, host)
    if v1 is not None:
        return v1.joinpath("freezer.state").read_text().strip() != "THAWED"
    events = CGROUP_ROOT / rel_path(lab, host) / "cgroup.events"
    if events.exists():
        return "frozen 1" in events.read_text()
    return False


def kill_all(lab: str, host: str | None = None, timeout: float = 10.0) -> None:
    """SIGKILL everything left in the cgroups (thawing first) and wait until they are empty."""
    if host:
        hosts = [host]
    else:
        hosts = [sub.name for base in existing(lab) for sub in base.iterdir() if sub.is_dir()]
    for h in set(hosts):
        with contextlib.suppress(LabError, OSError):
            freeze(lab, h, frozen=False)
    deadline = time.monotonic() + timeout
    while True:
        left = pids(lab, host)
        if not left:
            return
        if time.monotonic() > deadline:
            raise LabError(f"processes {sorted(left)} of lab {lab} survive SIGKILL")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove(lab: str, host: str | None = None) -> None:
    """Remove the cgroup folders (deepest first) in every hierarchy; they must be empty."""
    for base in existing(lab, host):
        for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda t: -len(Path(t[0]).parts)):
            for _ in range(50):
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)  # a dying process may still be accounted for a moment
            else:
                raise LabError(f"cannot remove cgroup {dirpath}")
    if host is None:
        return
    for hier in all_hierarchies():  # drop the lab's (and the top) folder once empty
        for rel in (rel_path(lab), Path(TOP)):
            try:
                os.rmdir(hier / rel)
            except OSError:
                break
