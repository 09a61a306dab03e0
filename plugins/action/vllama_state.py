"""Take the host lock and compare the host with its desired state, in one round trip.

With ``lock_path``, the vllama_state module takes the lock before it compares (nothing is
compared while another run holds it); the controller decides, as for vllama_lock, whether to
wait, replace a stale lock, or refuse (plugin_utils/vllama_lock.py). Without it, the module
only compares.
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

MODULE = "vllama.provision.vllama_state"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        require_package(VLLAMA_IMPORT_ERROR)
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        lock_path = args.get("lock_path") or ""
        if not lock_path:
            result.update(self._execute_module(module_name=MODULE, module_args=args,
                                               task_vars=task_vars))
            return result
        me = owner(task_vars, boot_id())
        # The task runs with check_mode off (the comparison is read-only); the lock follows
        # the play's own check mode.
        check = boolean(task_vars.get("ansible_check_mode", False), strict=False)

        def execute(replace_run_id):
            lock = {"path": lock_path, "owner": me, "replace_run_id": replace_run_id,
                    "check_mode": check}
            return self._execute_module(module_name=MODULE, task_vars=task_vars,
                                        module_args={**args, "lock": lock})

        res = take(execute, me, args.get("lock_wait", 0),
                   boolean(args.get("break_lock", False), strict=False), process_alive)
        res["changed"] = False
        result.update(res)
        return result
