"""Small helpers around the machine: the capability check, commands, locks and mounts."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from vllama_provision.errors import LabError, UsageError

NEEDS = "lab hosts need root and Linux with systemd-nspawn"


def missing_capabilities(uid: int | None = None, *, need_debootstrap: bool = False) -> list[str]:
    """What this machine lacks to run lab hosts (empty when it can). ``uid`` defaults to euid."""
    missing: list[str] = []
    if platform.system() != "Linux":
        missing.append(f"this is {platform.system()}, not Linux")
        return missing
    if uid is None:
        uid = os.geteuid()
    if uid != 0:
        missing.append(f"running as uid {uid}, not root")
    if shutil.which("systemd-nspawn") is None:
        missing.append("systemd-nspawn not found (apt-get install systemd-container)")
    if need_debootstrap and shutil.which("debootstrap") is None:
        missing.append("debootstrap not found (apt-get install debootstrap)")
    return missing


def require_lab_machine(uid: int | None = None, *, need_debootstrap: bool = False) -> None:
    """Raise :class:`UsageError` (exit 2) unless this machine can run lab hosts."""
    missing = missing_capabilities(uid, need_debootstrap=need_debootstrap)
    if missing:
        raise UsageError(f"{NEEDS}: " + "; ".join(missing))


def run(cmd: Sequence[str | os.PathLike[str]], *, what: str = "",
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, raising :class:`LabError` with its output when it fails."""
    try:
        proc = subprocess.run([os.fspath(c) for c in cmd], capture_output=True, text=True,
                              check=False, env=env)
    except OSError as exc:
        raise LabError(f"{what or cmd[0]}: cannot run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        what = what or " ".join(map(str, cmd))
        raise LabError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed); waits for other holders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _unescape_mount(field: str) -> str:
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def mounts_below(root: Path) -> list[Path]:
    """Mount points at or below ``root`` in this mount namespace, deepest first."""
    root_s = os.fspath(root.resolve()) if root.exists() else os.fspath(root)
    found: list[Path] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            point = _unescape_mount(line.split()[4])
            if point == root_s or point.startswith(root_s.rstrip("/") + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def is_mounted(point: Path) -> bool:
    return point in mounts_below(point)


def unmount_all_below(root: Path) -> None:
    """Unmount everything at or below ``root`` (lazily when busy); raise if something stays."""
    for _ in range(3):
        points = mounts_below(root)
        if not points:
            return
        for point in points:
            proc = subprocess.run(["umount", os.fspath(point)], capture_output=True, check=False)
            if proc.returncode != 0:
                subprocess.run(["umount", "-l", os.fspath(point)], capture_output=True,
                               check=False)
    left = mounts_below(root)
    if left:
        raise LabError(f"cannot unmount {', '.join(map(str, left))}")


def safe_rmtree(path: Path) -> None:
    """Remove a folder, refusing while anything is still mounted below it."""
    if not path.exists():
        return
    left = mounts_below(path)
    if left:
        raise LabError(f"refusing to remove {path}: still mounted: {', '.join(map(str, left))}")
    shutil.rmtree(path)
