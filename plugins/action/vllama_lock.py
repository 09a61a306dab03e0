"""Take or release the host lock, deciding on the controller what to do when it is held.

* held by a live run of this controller: wait (``wait`` seconds), then refuse;
* held by a run of this controller whose process is gone (killed, or the controller rebooted):
  the lock is stale; it is replaced and the result says so (``stale_lock``);
* held by another controller: refuse, naming the owner, unless ``break_lock`` is set.

The role takes the lock together with its state comparison (the vllama_state action, one round
trip); this action releases it, and takes it for plays that change a host without comparing.
"""

from __future__ import annotations

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_lock import owner, take
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
        me = owner(task_vars, boot_id())

        def execute(replace_run_id):
            return self._execute_module(
                module_name=MODULE, task_vars=task_vars,
                module_args={"path": args["path"], "state": state, "owner": me,
                             "replace_run_id": replace_run_id})

        if state == "released":
            res = execute("")
        else:
            res = take(execute, me, args.get("wait", 0),
                       boolean(args.get("break_lock", False), strict=False), process_alive)
        res["changed"] = False
        result.update(res)
        return result
