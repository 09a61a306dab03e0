#!/usr/bin/python
"""Preflight: can the host hold what this run's new releases add?

Counts only models not already in the store and engine environments not already installed (an
estimate from their wheels), measures free space on the file systems that will hold them (the
nearest existing folders; one sum when both are on the same file system), and refuses with the
numbers.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_store_space
short_description: Check free space for the models a run stages
description:
  - Preflight, can the host hold what this run's new releases add?
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
  engines:
    description: >-
      Engine environments the new releases use, each with C(path) (the venv) and C(size)
      (estimated installed bytes); only those not installed yet count.
    type: list
    elements: dict
    default: []
  install_root:
    description: Where engine environments are installed.
    type: path
  reserve_bytes:
    description: Space to keep free beyond the models.
    type: int
    default: 0
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Check the store's free space.
  vllama.provision.vllama_store_space:
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
        "engines": {"type": "list", "elements": "dict", "default": []},
        "install_root": {"type": "path"},
        "reserve_bytes": {"type": "int", "default": 0},
    }, supports_check_mode=True)
    p = module.params
    needed = sum(int(f.get("size") or 0) for f in p["files"] if not os.path.exists(f["store_path"]))
    engines = sum(int(e.get("size") or 0) for e in p["engines"] if not os.path.exists(e["path"]))
    where = nearest_existing(p["root"])
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    result = {"changed": False, "free_bytes": free, "needed_bytes": needed, "checked": where,
              "engine_bytes": engines}
    mib = 1048576
    reserve = (f" plus {p['reserve_bytes'] / mib:.1f} MiB reserve" if p["reserve_bytes"] else "")
    engine_where = nearest_existing(p["install_root"]) if p["install_root"] and engines else ""
    shared = bool(engine_where) and os.stat(engine_where).st_dev == os.stat(where).st_dev
    total = needed + (engines if shared else 0)
    if total + p["reserve_bytes"] > free:
        module.fail_json(
            msg=(f"{p['root']} ({where}) has {free / mib:.1f} MiB free; the models to stage "
                 f"need {needed / mib:.1f} MiB"
                 + (f" and the new engine environments about {engines / mib:.1f} MiB"
                    if shared else "") + reserve),
            vllama_refused=True, **result)
    if engine_where and not shared:
        est = os.statvfs(engine_where)
        engine_free = est.f_bavail * est.f_frsize
        if engines + p["reserve_bytes"] > engine_free:
            module.fail_json(
                msg=(f"{p['install_root']} ({engine_where}) has {engine_free / mib:.1f} MiB "
                     f"free; the new engine environments need about {engines / mib:.1f} MiB"
                     + reserve), vllama_refused=True, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
