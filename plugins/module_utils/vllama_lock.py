"""The host lock file, as the vllama_lock and vllama_state modules take and release it.

The lock is a file created with O_EXCL holding its owner (run id, controller, process, start
time). Taking it when another run holds it returns that owner, so the controller side can wait,
refuse, or replace a stale lock left by a killed run (plugin_utils/vllama_lock.py).
"""

from __future__ import annotations

import json
import os
import tempfile


def read_owner(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {"run_id": "unknown", "unreadable": True}


def _create(path, owner):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(owner, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _replace(path, owner):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".lock-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(owner, handle)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def acquire(path, owner, replace_run_id="", check_mode=False):
    """Take the lock for ``owner``: {acquired: True[, replaced]} or {acquired: False, held_by}.
    In check mode nothing is written: a free lock counts as taken."""
    current = read_owner(path) if os.path.exists(path) else None
    if current and current.get("run_id") == owner.get("run_id"):
        return {"acquired": True}
    if check_mode:
        return {"acquired": False, "held_by": current} if current else {"acquired": True}
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if current and replace_run_id and current.get("run_id") == replace_run_id:
        _replace(path, owner)
        return {"acquired": True, "replaced": current}
    try:
        _create(path, owner)
    except FileExistsError:
        return {"acquired": False, "held_by": read_owner(path)}
    return {"acquired": True}


def release(path, owner, check_mode=False):
    """Remove the lock when ``owner``'s run holds it."""
    current = read_owner(path) if os.path.exists(path) else None
    if current and current.get("run_id") == owner.get("run_id") and not check_mode:
        os.unlink(path)
