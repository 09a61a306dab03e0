"""Controller processes: whether a run's process still lives, and which boot this is.

Shared by the host lock (is the run holding a lock gone?) and the watchdog (is the CLI gone?).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def process_alive(pid: int) -> bool:
    """Whether the process runs; a killed process nobody has reaped yet (a zombie) is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parents() -> dict[int, int]:
    """PID -> parent PID of every process (from /proc; from `ps` where there is none)."""
    found: dict[int, int] = {}
    if os.path.isdir("/proc/self"):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", encoding="utf-8") as handle:
                    found[int(name)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
        return found
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True,
                         check=False).stdout
    for line in out.splitlines():
        pid, _, ppid = line.strip().partition(" ")
        if pid.isdigit() and ppid.strip().isdigit():
            found[int(pid)] = int(ppid)
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, whatever session or process group it moved to."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL everything below ``pid``: frozen first (SIGSTOP) so nothing forks meanwhile, in
    rounds until no new process appears. ``pid`` itself is left alone."""
    seen: set[int] = set()
    for _ in range(5):
        fresh = [p for p in descendants(pid) if p not in seen]
        if not fresh:
            break
        for child in fresh:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGSTOP)
        seen.update(fresh)
    for child in seen:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)


def boot_id() -> str:
    """This boot's id ('' where the kernel does not say): a changed id means a reboot."""
    try:
        with open(BOOT_ID, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""
