"""The controller side of the host lock, shared by the vllama_lock and vllama_state actions.

Taking the lock when another run holds it, the controller decides:

* held by a live run of this controller: wait (``wait`` seconds), then refuse;
* held by a run of this controller whose process is gone (killed, or the controller rebooted):
  the lock is stale; it is replaced and the result says so (``stale_lock``);
* held by another controller: refuse, naming the owner, unless ``break_lock`` is set.
"""

from __future__ import annotations

import os
import socket
import time


def owner(task_vars, boot_id):
    """The owner record of this run's lock."""
    return {
        # Runs started with ansible-playbook directly are named after their process.
        "run_id": task_vars.get("vllama_run_id") or f"adhoc-{os.getppid()}-{boot_id[:8]}",
        "controller": socket.gethostname(), "boot_id": boot_id,
        # The ansible-playbook process: the worker running the plugin is its child.
        "pid": os.getppid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": task_vars.get("vllama_run_command", "ansible-playbook"),
    }


def stale_reason(held, me, process_alive):
    """Why a lock held by another run is stale, or '' when it may be alive."""
    if held.get("unreadable"):
        return "the lock file is unreadable"
    if held.get("controller") != me["controller"]:
        return ""
    if held.get("boot_id") and held.get("boot_id") != me["boot_id"]:
        return "the controller rebooted since"
    pid = int(held.get("pid") or 0)
    if pid and not process_alive(pid):
        return f"its process {pid} is gone"
    return ""


def take(execute, me, wait, break_lock, process_alive, sleep=2.0):
    """Take the lock through ``execute(replace_run_id)`` (one module call returning its result,
    with ``acquired`` and ``held_by``). Returns the module's result once acquired (with
    ``stale_lock`` and ``msg`` when a lock was replaced), or a refusal."""
    deadline = time.monotonic() + int(wait)
    while True:
        res = execute("")
        if res.get("failed") or res.get("acquired"):
            return res
        held = res.get("held_by") or {}
        stale = stale_reason(held, me, process_alive)
        if stale or (held and break_lock):
            res = execute(held.get("run_id", ""))
            if res.get("failed"):
                return res
            if res.get("acquired"):
                res["stale_lock"] = held
                res["msg"] = (f"replaced the lock of run {held.get('run_id')} "
                              f"({stale or 'broken on request'})")
                return res
            held = res.get("held_by") or held  # another run took it meanwhile
        if time.monotonic() >= deadline:
            return {"failed": True, "vllama_refused": True, "held_by": held, "msg": (
                f"REFUSED: the host is locked by run {held.get('run_id')} "
                f"({held.get('command')}, pid {held.get('pid')} on {held.get('controller')}, "
                f"since {held.get('started')}); wait for it, or if that run is gone, re-run "
                "with --break-lock")}
        time.sleep(sleep)
