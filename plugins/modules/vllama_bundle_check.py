#!/usr/bin/python
"""Check the bundle files unpacked on a host against the signed manifest's sha256 and size.

Every file a host installs from (packages, wheels, the repository's metadata) is checked here
before apt or pip reads it. The first file that differs fails the task with its name; with
``remove_on_failure`` the unpacked folder is removed, so nothing from a bad bundle stays on the
host.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_bundle_check
short_description: Check unpacked bundle files against their manifest hashes
description:
  - Check the bundle files unpacked on a host against the signed manifest's sha256 and size.
options:
  root:
    description: Folder the files were unpacked into.
    type: path
    required: true
  files:
    description: The files, each with C(path) (relative to I(root)), C(sha256) and C(size).
    type: list
    elements: dict
    required: true
  remove_on_failure:
    description: Remove I(root) when a file does not match.
    type: bool
    default: false
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Check the unpacked bundle.
  vllama.provision.vllama_bundle_check:
    root: /opt/vllama/bundle/0123456789abcdef
    files:
      - {path: apt/debian12-amd64/Packages, sha256: "...", size: 1234}
"""

RETURN = r"""
checked:
  description: Number of files checked.
  type: int
  returned: always
"""

import hashlib
import os
import shutil

from ansible.module_utils.basic import AnsibleModule


def problem(root, entry):
    """'' when the file matches, else what is wrong, naming the file."""
    rel = entry["path"]
    path = os.path.join(root, rel)
    if os.path.isabs(rel) or ".." in rel.split("/"):
        return f"bundle file {rel}: unsafe path"
    if not os.path.isfile(path) or os.path.islink(path):
        return f"bundle file {rel} is missing on the host"
    size = os.path.getsize(path)
    if size != int(entry["size"]):
        return (f"bundle file {rel} does not match the manifest: {size} bytes, the manifest "
                f"says {entry['size']}")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != entry["sha256"]:
        return (f"bundle file {rel} does not match the manifest: sha256 {digest.hexdigest()}, "
                f"the manifest says {entry['sha256']}")
    return ""


def main():
    module = AnsibleModule(argument_spec={
        "root": {"type": "path", "required": True},
        "files": {"type": "list", "elements": "dict", "required": True},
        "remove_on_failure": {"type": "bool", "default": False},
    }, supports_check_mode=True)
    root = module.params["root"]
    for entry in module.params["files"]:
        found = problem(root, entry)
        if found:
            if module.params["remove_on_failure"] and not module.check_mode:
                shutil.rmtree(root, ignore_errors=True)
            module.fail_json(msg=found + "; nothing from the bundle was installed",
                             file=entry["path"])
    module.exit_json(changed=False, checked=len(module.params["files"]))


if __name__ == "__main__":
    main()
