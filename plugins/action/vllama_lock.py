"""Take or release the host lock, deciding on the controller what to do when it is held.

* held by a live run of this controller: wait (``wait`` seconds), then refuse;
* held by a run of this controller whose process is gone (killed, or the controller rebooted):
  the lock is stale; it is replaced and the result says so (``stale_lock``);
* held by another controller: refuse, naming the owner, unless ``break_lock`` is set.
"""

from __future__ import annotations

import os
import socket
import time

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision.procs import boot_id, process_alive
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None

MODULE = "vllama.provision.vllama_lock"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        require_package(VLLAMA_IMPORT_ERROR)
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        state = args.get("state", "acquired")
        owner = {
            # Runs started with ansible-playbook directly are named after their process.
            "run_id": task_vars.get("vllama_run_id") or f"adhoc-{os.getppid()}-{boot_id()[:8]}",
            "controller": socket.gethostname(), "boot_id": boot_id(),
            # The ansible-playbook process: the worker running this plugin is its child.
            "pid": os.getppid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": task_vars.get("vllama_run_command", "ansible-playbook"),
        }
        module_args = {"path": args["path"], "state": state, "owner": owner}
        deadline = time.monotonic() + int(args.get("wait", 0))
        while True:
            res = self._execute_module(module_name=MODULE, module_args=module_args,
                                       task_vars=task_vars)
            if res.get("failed") or state == "released" or res.get("acquired"):
                res.setdefault("changed", False)
                result.update(res)
                return result
            held = res.get("held_by") or {}
            stale = self._stale(held, owner)
            if stale or (held and boolean(args.get("break_lock", False), strict=False)):
                module_args["replace_run_id"] = held.get("run_id", "")
                res = self._execute_module(module_name=MODULE, module_args=module_args,
                                           task_vars=task_vars)
                res["stale_lock"] = held
                res["msg"] = (f"replaced the lock of run {held.get('run_id')} "
                              f"({stale or 'broken on request'})")
                result.update(res)
                result["changed"] = False
                return result
            if time.monotonic() >= deadline:
                result.update(failed=True, vllama_refused=True, held_by=held, msg=(
                    f"REFUSED: the host is locked by run {held.get('run_id')} "
                    f"({held.get('command')}, pid {held.get('pid')} on {held.get('controller')}, "
                    f"since {held.get('started')}); wait for it, or if that run is gone, re-run "
                    "with --break-lock"))
                return result
            time.sleep(2)

    @staticmethod
    def _stale(held: dict, me: dict) -> str:
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
