"""Controller processes: whether a run's process still lives, and which boot this is.

Shared by the host lock (is the run holding a lock gone?) and the watchdog (is the CLI gone?).
"""

from __future__ import annotations

import os

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


def boot_id() -> str:
    """This boot's id ('' where the kernel does not say): a changed id means a reboot."""
    try:
        with open(BOOT_ID, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""
