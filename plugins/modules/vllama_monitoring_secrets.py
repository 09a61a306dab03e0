#!/usr/bin/python
"""Write the monitoring host's secret files, 0640 root:GROUP, atomically; never print one.

Each file holds one secret (Prometheus' own password, or the key of an instance whose
/metrics needs it) and nothing else, as Prometheus' password_file and credentials_file read
them. Files of the folder that are no longer planned are removed.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_monitoring_secrets
short_description: Write the monitoring host's secret files
description:
  - Writes each secret to its file (0640, owned by root and the Prometheus group), atomically,
    in a 0750 folder; reports a change only when a file changed; removes files of that folder
    no longer planned. Secrets never appear in the result.
  - The action plugin of the same name reads the secrets on the controller and calls this
    module.
options:
  folder:
    description: The folder of the secret files.
    type: path
    required: true
  files:
    description: Each file's secret by path (every path inside O(folder)).
    type: dict
    required: true
  group:
    description: The group that may read the files (the one Prometheus runs as).
    type: str
    default: prometheus
  plan:
    description: The monitoring plan (C(_vllama_monitoring)); read by the action plugin only.
    type: dict
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Write the monitoring host's secret files (never printed).
  vllama.provision.vllama_monitoring_secrets:
    plan: "{{ _vllama_monitoring }}"
"""

RETURN = r"""
files:
  description: The secret files written or kept.
  returned: success
  type: list
  elements: str
removed:
  description: Files of the folder removed because nothing reads them any more.
  returned: success
  type: list
  elements: str
"""

import grp
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule


def _write(module, path, text, gid):
    """Write ``text`` to ``path`` (0640 root:gid) unless it holds it already; True if changed."""
    try:
        with open(path, encoding="utf-8") as handle:
            current = os.stat(path)
            if handle.read() == text and (current.st_mode & 0o777) == 0o640 \
                    and current.st_gid == gid and current.st_uid == 0:
                return False
    except OSError:
        pass
    if module.check_mode:
        return True
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".vllama-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chown(tmp, 0, gid)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def main():
    module = AnsibleModule(
        argument_spec={
            "folder": {"type": "path", "required": True},
            "files": {"type": "dict", "required": True, "no_log": True},
            "group": {"type": "str", "default": "prometheus"},
            "plan": {"type": "dict"},
        },
        supports_check_mode=True,
    )
    folder = module.params["folder"]
    files = module.params["files"]
    outside = sorted(p for p in files if os.path.dirname(p) != folder)
    if outside:
        module.fail_json(msg="secret files outside " + folder + ": " + ", ".join(outside))
    # A password or key is one word; a certificate or TLS key is PEM text.
    bad = sorted(p for p, secret in files.items() if not secret or (
        not secret.startswith("-----BEGIN ") and any(c.isspace() for c in secret)))
    if bad:
        module.fail_json(msg="these secrets are empty or hold spaces: " + ", ".join(bad))
    try:
        gid = grp.getgrnam(module.params["group"]).gr_gid
    except KeyError:
        if module.check_mode:
            module.exit_json(changed=True, files=sorted(files), removed=[])
        module.fail_json(msg=f"no group {module.params['group']} on this host")
    changed = False
    if not os.path.isdir(folder):
        changed = True
        if not module.check_mode:
            os.makedirs(folder, mode=0o750)
    if not module.check_mode:
        stat = os.stat(folder)
        if (stat.st_mode & 0o777) != 0o750 or stat.st_gid != gid or stat.st_uid != 0:
            os.chown(folder, 0, gid)
            os.chmod(folder, 0o750)
            changed = True
    for path, secret in sorted(files.items()):
        changed = _write(module, path, secret + "\n", gid) or changed
    removed = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if path not in files and os.path.isfile(path) and not name.startswith("."):
                removed.append(path)
                if not module.check_mode:
                    os.unlink(path)
    module.exit_json(changed=changed or bool(removed), files=sorted(files), removed=removed)


if __name__ == "__main__":
    main()
