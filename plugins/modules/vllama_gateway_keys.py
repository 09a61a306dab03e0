#!/usr/bin/python
"""Write the gateway's two key maps (and its TLS certificate and key), 0600 root, atomically;
never print a key.

clients.map holds one line per client key: its SHA-256 (hex) and its name; HAProxy hashes the
key a request carries and looks the hash up, so the gateway host never holds a client key.
upstreams.map holds one line per instance behind the gateway: its upstream id and the
``Authorization`` value HAProxy sends that instance.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_gateway_keys
short_description: Write the gateway's key maps
description:
  - Writes the gateway's client key map (SHA-256 of each key, and its name) and the map of the
    instances' own keys, 0600 root, atomically; reports a change only when a file's content
    changed. Keys never appear in the result.
  - The action plugin of the same name reads the keys on the controller and calls this module.
options:
  clients_map:
    description: Path of the client key map.
    type: path
    required: true
  upstreams_map:
    description: Path of the instances' key map.
    type: path
    required: true
  clients:
    description: Pairs of (SHA-256 hex of a client key, the key's name).
    type: list
    elements: list
    required: true
  upstreams:
    description: Each instance's key by upstream id.
    type: dict
    required: true
  tls_pem_file:
    description: Path of the listener's certificate and key (with O(tls_pem)).
    type: path
  tls_pem:
    description: The listener's certificate chain and private key, PEM; empty removes the file.
    type: str
    default: ""
  plan:
    description: The gateway plan (C(_vllama_gateway)); read by the action plugin only.
    type: dict
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Write the gateway's key maps (0600, never printed).
  vllama.provision.vllama_gateway_keys:
    plan: "{{ _vllama_gateway }}"
  no_log: true
"""

RETURN = r"""
clients:
  description: Names of the client keys the gateway accepts.
  returned: success
  type: list
  elements: str
upstreams:
  description: Upstream ids whose key the gateway holds.
  returned: success
  type: list
  elements: str
"""

import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

HEADER = ("# Managed by vllama-provision: local changes are overwritten on the next apply.\n"
          "# {what}\n")
_WORD = re.compile(r"^\S+$")


def _write(module, path, text):
    """Write ``text`` to ``path`` (0600 root) unless it holds it already; True when changed."""
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text and (os.stat(path).st_mode & 0o777) == 0o600:
                return False
    except OSError:
        pass
    if module.check_mode:
        return True
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".vllama-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def main():
    module = AnsibleModule(
        argument_spec={
            "clients_map": {"type": "path", "required": True},
            "upstreams_map": {"type": "path", "required": True},
            "clients": {"type": "list", "elements": "list", "required": True, "no_log": False},
            "upstreams": {"type": "dict", "required": True, "no_log": True},
            "tls_pem_file": {"type": "path"},
            "tls_pem": {"type": "str", "default": "", "no_log": True},
            "plan": {"type": "dict"},
        },
        supports_check_mode=True,
    )
    clients = module.params["clients"]
    upstreams = module.params["upstreams"]
    for pair in clients:
        if len(pair) != 2 or not all(_WORD.match(str(v)) for v in pair):
            module.fail_json(msg="each client entry must be [sha256, name] without spaces")
    bad = sorted(uid for uid, key in upstreams.items() if not _WORD.match(str(key)))
    if bad:
        module.fail_json(msg="the keys of these instances hold spaces: " + ", ".join(bad))
    client_text = HEADER.format(what="SHA-256 of each client key, and its name.") + "".join(
        f"{digest} {name}\n" for digest, name in clients)
    upstream_text = HEADER.format(what="Each instance's Authorization header.") + "".join(
        f"{uid} Bearer {key}\n" for uid, key in sorted(upstreams.items()))
    changed = _write(module, module.params["clients_map"], client_text)
    changed = _write(module, module.params["upstreams_map"], upstream_text) or changed
    pem_file = module.params["tls_pem_file"]
    if pem_file and module.params["tls_pem"]:
        changed = _write(module, pem_file, module.params["tls_pem"]) or changed
    elif pem_file and os.path.exists(pem_file):
        if not module.check_mode:
            os.unlink(pem_file)
        changed = True
    module.exit_json(changed=changed, clients=[pair[1] for pair in clients],
                     upstreams=sorted(upstreams))


if __name__ == "__main__":
    main()
