#!/usr/bin/python
"""Ensure an instance's API key exists on the host, 0600, and never print it.

The key lives in two root-owned (or service-user-owned) 0600 files: the key file (for engines
that read a key file, and for verification) and the environment file systemd hands the engine
(``NAME=key``). A key is generated on first use unless the operator supplies one.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_api_key
short_description: Ensure an engine instance's API key files
description:
  - Ensure an instance's API key exists on the host, 0600, and never print it.
options:
  key_file:
    description: Key file (the key alone), mode 0600.
    type: path
    required: true
  secret_env:
    description: systemd environment file holding C(env_name=key), mode 0600, owned by root.
    type: path
    required: true
  env_name:
    description: Variable the engine reads the key from; empty writes no assignment.
    type: str
    default: ""
  owner:
    description: Owner of the key file (the engine user when the engine reads the file itself).
    type: str
    default: root
  key:
    description: Key supplied by the operator; empty keeps the existing key or generates one.
    type: str
    default: ""
  rotate:
    description: Replace the key with a new random one.
    type: bool
    default: false
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Ensure the API key.
  vllama.provision.vllama_api_key:
    key_file: /var/lib/vllama/secrets/chat.key
    secret_env: /var/lib/vllama/secrets/chat.env
    env_name: API_KEY
  no_log: true
"""

RETURN = r"""
generated:
  description: Whether a new key was generated.
  returned: always
  type: bool
"""

import os
import pwd
import secrets
import tempfile

from ansible.module_utils.basic import AnsibleModule


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _write_private(path, content, uid, gid):
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        os.fchown(fd, uid, gid)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _needs_fix(path, uid):
    try:
        st = os.stat(path)
    except OSError:
        return True
    return (st.st_mode & 0o777) != 0o600 or st.st_uid != uid


def main():
    module = AnsibleModule(argument_spec={
        "key_file": {"type": "path", "required": True},
        "secret_env": {"type": "path", "required": True},
        "env_name": {"type": "str", "default": ""},
        "owner": {"type": "str", "default": "root"},
        "key": {"type": "str", "default": "", "no_log": True},
        "rotate": {"type": "bool", "default": False},
    }, supports_check_mode=True)
    p = module.params
    try:
        owner = pwd.getpwnam(p["owner"])
    except KeyError:
        if module.check_mode:
            module.exit_json(changed=True, generated=False)
        module.fail_json(msg=f"user {p['owner']} does not exist")
    current = _read(p["key_file"])
    generated = False
    if p["key"]:
        key = p["key"]
    elif current and not p["rotate"]:
        key = current
    else:
        key = "vllama-" + secrets.token_urlsafe(32)
        generated = True
    env_content = f"{p['env_name']}={key}\n" if p["env_name"] else ""
    key_content = key + "\n"
    changed = (current != key or _needs_fix(p["key_file"], owner.pw_uid)
               or _read(p["secret_env"]) != env_content.strip()
               or _needs_fix(p["secret_env"], 0))
    if changed and not module.check_mode:
        _write_private(p["key_file"], key_content, owner.pw_uid, owner.pw_gid)
        _write_private(p["secret_env"], env_content, 0, 0)
    module.exit_json(changed=changed, generated=generated)


if __name__ == "__main__":
    main()
