#!/usr/bin/python
"""The host lock: one vllama-provision run changes a host at a time.

The lock is a file created with O_EXCL holding its owner (run id, controller, process, start
time). Taking it when it is held returns the owner, so the controller side (the action plugin of
the same name) can wait, refuse, or replace a stale lock left by a killed run.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_lock
short_description: Take or release the vllama host lock
description:
  - The host lock, one vllama-provision run changes a host at a time.
options:
  path:
    description: The lock file.
    type: path
    required: true
  state:
    description: C(acquired) takes the lock, C(released) removes it if this run owns it.
    type: str
    choices: [acquired, released]
    default: acquired
  owner:
    description: Owner record (run_id, controller, boot_id, pid, started, command).
    type: dict
    required: true
  replace_run_id:
    description: Replace the lock only if it is held by this (stale) run id.
    type: str
    default: ""
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Take the host lock.
  vllama.provision.vllama_lock:
    path: /var/lib/vllama/lock
    owner: {run_id: abc}
"""

RETURN = r"""
acquired:
  description: Whether this run holds the lock now.
  returned: always
  type: bool
held_by:
  description: The owner record of the lock when another run holds it.
  returned: when another run holds the lock
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vllama.provision.plugins.module_utils.vllama_lock import acquire, release


def main():
    module = AnsibleModule(argument_spec={
        "path": {"type": "path", "required": True},
        "state": {"type": "str", "choices": ["acquired", "released"], "default": "acquired"},
        "owner": {"type": "dict", "required": True},
        "replace_run_id": {"type": "str", "default": ""},
    }, supports_check_mode=True)
    p = module.params
    if p["state"] == "released":
        release(p["path"], p["owner"], module.check_mode)
        module.exit_json(changed=False, acquired=False)
    module.exit_json(changed=False, **acquire(p["path"], p["owner"], p["replace_run_id"],
                                              module.check_mode))


if __name__ == "__main__":
    main()
