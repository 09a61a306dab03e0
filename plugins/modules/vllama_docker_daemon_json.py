#!/usr/bin/python
"""Add container runtimes to Docker's daemon.json without ever overwriting the user's settings.

What ``nvidia-ctk runtime configure --runtime=docker`` does, made safe to repeat: the file is
read first; a runtime that is already configured (under any settings) is left alone; every other
key of the file is kept as it was; the new file replaces the old one atomically (same folder,
fsync, rename) with the old mode, and a backup of the old content is kept. An unreadable or
invalid file is refused, never replaced.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_docker_daemon_json
short_description: Merge container runtimes into Docker's daemon.json
description:
  - Adds each runtime of O(runtimes) that C(runtimes) in the file does not have yet.
  - Keeps every other key; refuses a file that is not a JSON object.
options:
  path:
    description: The daemon.json file.
    type: path
    default: /etc/docker/daemon.json
  runtimes:
    description: Runtime name to its settings (C(path), optional C(args)).
    type: dict
    required: true
  backup:
    description: Keep a timestamped copy of the old file when it changes.
    type: bool
    default: true
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Register the NVIDIA runtime with Docker.
  vllama.provision.vllama_docker_daemon_json:
    runtimes:
      nvidia:
        path: nvidia-container-runtime
        args: []
"""

RETURN = r"""
added:
  description: Names of the runtimes that were added.
  returned: always
  type: list
  elements: str
daemon_json:
  description: The merged content.
  returned: always
  type: dict
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule


def read_config(path):
    """(content dict, raw text or None when absent); raises ValueError with the reason."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return {}, None
    if not raw.strip():
        return {}, raw
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg}); it was left untouched") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(data).__name__}; it was "
                         "left untouched")
    if "runtimes" in data and not isinstance(data["runtimes"], dict):
        raise ValueError(f"{path}: 'runtimes' must be an object; it was left untouched")
    return data, raw


def merge(data, runtimes):
    """(merged copy, names added): only runtimes the file lacks are added."""
    merged = json.loads(json.dumps(data))
    existing = merged.setdefault("runtimes", {})
    added = []
    for name, spec in sorted(runtimes.items()):
        if name in existing:
            continue
        existing[name] = {"path": spec["path"], **({"args": spec["args"]}
                                                   if "args" in spec else {})}
        added.append(name)
    if not existing and "runtimes" not in data:
        merged.pop("runtimes")
    return merged, added


def write_atomic(path, text, mode):
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".daemon.json.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main():
    module = AnsibleModule(argument_spec={
        "path": {"type": "path", "default": "/etc/docker/daemon.json"},
        "runtimes": {"type": "dict", "required": True},
        "backup": {"type": "bool", "default": True},
    }, supports_check_mode=True)
    path = module.params["path"]
    for name, spec in module.params["runtimes"].items():
        if not isinstance(spec, dict) or not spec.get("path"):
            module.fail_json(msg=f"runtimes.{name}: needs a 'path'")
    try:
        data, raw = read_config(path)
    except (ValueError, OSError) as exc:
        module.fail_json(msg=str(exc))
    merged, added = merge(data, module.params["runtimes"])
    result = {"changed": bool(added), "added": added, "daemon_json": merged}
    if added:
        text = json.dumps(merged, indent=2) + "\n"
        result["diff"] = {"before": raw or "", "after": text, "before_header": path,
                          "after_header": path}
        if not module.check_mode:
            mode = 0o644
            if raw is not None:
                mode = os.stat(path).st_mode & 0o7777
                if module.params["backup"]:
                    result["backup_file"] = module.backup_local(path)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            write_atomic(path, text, mode)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
