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

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule


def _read(path):
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


def main():
    module = AnsibleModule(argument_spec={
        "path": {"type": "path", "required": True},
        "state": {"type": "str", "choices": ["acquired", "released"], "default": "acquired"},
        "owner": {"type": "dict", "required": True},
        "replace_run_id": {"type": "str", "default": ""},
    }, supports_check_mode=True)
    p = module.params
    path, owner = p["path"], p["owner"]
    current = _read(path) if os.path.exists(path) else None
    if p["state"] == "released":
        if current and current.get("run_id") == owner.get("run_id") and not module.check_mode:
            os.unlink(path)
        module.exit_json(changed=False, acquired=False)
    if current and current.get("run_id") == owner.get("run_id"):
        module.exit_json(changed=False, acquired=True)
    if module.check_mode:
        if current:
            module.exit_json(changed=False, acquired=False, held_by=current)
        module.exit_json(changed=False, acquired=True)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if current and p["replace_run_id"] and current.get("run_id") == p["replace_run_id"]:
        _replace(path, owner)
        module.exit_json(changed=False, acquired=True, replaced=current)
    try:
        _create(path, owner)
    except FileExistsError:
        module.exit_json(changed=False, acquired=False, held_by=_read(path))
    module.exit_json(changed=False, acquired=True)


if __name__ == "__main__":
    main()
