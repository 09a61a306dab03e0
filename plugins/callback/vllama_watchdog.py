"""Stop the Ansible run when the vllama-provision CLI that started it dies.

ansible-runner starts ansible-playbook in a session of its own, so a CLI killed with SIGKILL
would otherwise leave the playbook running on, changing hosts nobody watches. The CLI exports
its pid as VLLAMA_CLI_PID; this callback checks it every second and, once it is gone, kills
every process below the playbook, then the playbook's process group. Not the group alone:
ansible-core 2.19's workers call setsid(), and so do Mitogen's SSH clients (its multiplexer,
forked from the playbook, stays in the group), so a group kill left a worker and its SSH
connection running its task to the end. What a killed run leaves behind (a stale host lock, a
partial model under its temporary name) is handled by the next run.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: vllama_watchdog
type: aggregate
short_description: Stop the run when the vllama-provision CLI is gone
description:
  - Reads the CLI's pid from the VLLAMA_CLI_PID environment variable; does nothing without it.
  - The vllama-provision CLI enables it (its ansible.cfg sets callbacks_enabled).
"""

import os
import signal
import threading
import time

from ansible.plugins.callback import CallbackBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at use)
    from vllama_provision.procs import kill_tree, process_alive
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "vllama_watchdog"
    CALLBACK_NEEDS_ENABLED = True  # ansible.cfg: callbacks_enabled

    def __init__(self) -> None:
        super().__init__()
        pid = int(os.environ.get("VLLAMA_CLI_PID", "0") or 0)
        if pid > 1:
            require_package(VLLAMA_IMPORT_ERROR)
            threading.Thread(target=self._watch, args=(pid,), daemon=True,
                             name="vllama-watchdog").start()

    @staticmethod
    def _watch(pid: int) -> None:
        while process_alive(pid):
            time.sleep(1)
        kill_tree(os.getpid())
        os.killpg(os.getpgrp(), signal.SIGKILL)
