"""Shared code of the macOS stand-ins: what every imitated command does besides its own job.

The stand-ins make a Linux lab host (Debian 12, systemd) answer like a macOS Apple Silicon host.
They live under a command root R mirroring macOS's absolute paths (R/usr/bin/sw_vers,
R/bin/launchctl...); Debian's own commands stay untouched. This module:

- records every call: one JSON line {"t": <unix time>, "cmd": <name>, "argv": [...]} appended,
  under an exclusive fcntl lock, to /var/log/vllama-macos-standin/calls.jsonl;
- keeps state: what a Mac keeps across a restart under /var/lib/vllama-macos-standin/, what it
  loses at a restart (sysctl values, launchd's loaded jobs) under /run/vllama-macos-standin/
  (a tmpfs, cleared at boot as a Mac clears its kernel's and launchd's state);
- runs a stand-in's main function and turns its answer into an exit status.

VLLAMA_MACOS_STANDIN_PREFIX (unset on the lab host) puts those three folders under another
folder, so the unit tests can run the stand-ins without touching /var or /run.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

PREFIX_ENV = "VLLAMA_MACOS_STANDIN_PREFIX"


def _under_prefix(path: str) -> Path:
    return Path(os.environ.get(PREFIX_ENV, "") + path)


def log_dir() -> Path:
    """Where the calls (and the stand-ins' own diagnostics) are logged."""
    return _under_prefix("/var/log/vllama-macos-standin")


def state_dir() -> Path:
    """State a Mac keeps across a restart (pmset's settings, launchd's disabled services)."""
    return _under_prefix("/var/lib/vllama-macos-standin")


def run_dir() -> Path:
    """State a Mac loses at a restart (sysctl values, launchd's loaded jobs): /run is a tmpfs."""
    return _under_prefix("/run/vllama-macos-standin")


def record_call(cmd: str, argv: list[str]) -> None:
    """Append this call to calls.jsonl. Any caller may write it (a non-root `sysctl -n` as much
    as root's `launchctl bootstrap`): the folder is created world-writable and sticky, the file
    world-writable. A call that cannot be recorded says so on stderr, never silently."""
    folder = log_dir()
    line = json.dumps({"t": time.time(), "cmd": cmd, "argv": list(argv)}) + "\n"
    try:
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o1777)
        fd = os.open(folder / "calls.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line.encode())
        finally:
            os.close(fd)  # closing releases the lock
    except OSError as exc:
        print(f"vllama macOS stand-in: could not record this call of {cmd}: {exc}",
              file=sys.stderr)


def diagnose(name: str, message: str) -> None:
    """A stand-in's own note (what systemd said, a --boot failure): appended to <name>.log in
    the log folder, never printed, so the imitated command's output stays macOS's."""
    try:
        log_dir().mkdir(parents=True, exist_ok=True)
        with open(log_dir() / f"{name}.log", "a", encoding="utf-8") as handle:
            handle.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + message.rstrip() + "\n")
    except OSError:
        pass


def read_json(path: Path, default: dict) -> dict:
    """A JSON object from ``path``; ``default`` (copied) when the file is absent or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return dict(default)
    return value if isinstance(value, dict) else dict(default)


def write_json(path: Path, value: dict) -> None:
    """Replace ``path`` atomically (a reader sees the old or the new object, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def is_root() -> bool:
    return os.geteuid() == 0


def main(cmd: str, run: Callable[[list[str]], int]) -> int:
    """Record the call, then run the stand-in: ``run(argv)`` prints what the Mac would print
    and returns the exit status."""
    argv = sys.argv[1:]
    record_call(cmd, argv)
    try:
        return run(argv)
    except BrokenPipeError:
        return 1
