#!/usr/bin/python
"""Preflight: can the model store hold the models this run still has to stage?

Counts only files not already in the store, measures free space on the file system that will
hold the store (the nearest existing folder), and refuses with both numbers.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_store_space
short_description: Check free space for the models a run stages
options:
  root:
    description: The models root.
    type: path
    required: true
  files:
    description: Files to stage, each with C(store_path) (final store path) and C(size) in bytes.
    type: list
    elements: dict
    default: []
  reserve_bytes:
    description: Space to keep free beyond the models.
    type: int
    default: 0
author: vllama-provision
"""

EXAMPLES = r"""
- name: Check the store's free space.
  vllama_store_space:
    root: /tank/ai/models
    files: [{store_path: /tank/ai/models/x/abc/model.gguf, size: 98362432}]
"""

RETURN = r"""
free_bytes:
  description: Free bytes on the file system holding the store.
  returned: always
  type: int
needed_bytes:
  description: Bytes the missing files need.
  returned: always
  type: int
"""

import os

from ansible.module_utils.basic import AnsibleModule


def nearest_existing(path):
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path or "/"


def main():
    module = AnsibleModule(argument_spec={
        "root": {"type": "path", "required": True},
        "files": {"type": "list", "elements": "dict", "default": []},
        "reserve_bytes": {"type": "int", "default": 0},
    }, supports_check_mode=True)
    p = module.params
    needed = sum(int(f.get("size") or 0) for f in p["files"] if not os.path.exists(f["store_path"]))
    where = nearest_existing(p["root"])
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    result = {"changed": False, "free_bytes": free, "needed_bytes": needed, "checked": where}
    if needed + p["reserve_bytes"] > free:
        module.fail_json(
            msg=(f"{p['root']} ({where}) has {free / 1048576:.1f} MiB free; the models to "
                 f"stage need {needed / 1048576:.1f} MiB"
                 + (f" plus {p['reserve_bytes'] / 1048576:.1f} MiB reserve"
                    if p["reserve_bytes"] else "")),
            vllama_refused=True, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
