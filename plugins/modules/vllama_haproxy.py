#!/usr/bin/python
"""The gateway's HAProxy: what is installed, its servers' state, and the state saved for a
reload (so drained instances stay drained)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_haproxy
short_description: Read and keep the state of the gateway's HAProxy
description:
  - C(operation=info) reads the installed HAProxy (C(haproxy -vv)), or the version the package
    manager would install, and says whether it has what the gateway needs (2.5 or newer for
    C(json_query), Lua for the live model list).
  - C(operation=save_state) writes the servers' state (C(show servers state) on the admin
    socket) to the server state file the next HAProxy process loads, so a reload keeps
    drained instances drained. Nothing is written when the gateway is not running.
  - C(operation=servers) returns the state of every instance in every model backend, waiting
    up to O(wait) seconds for each model with instances to have one up.
  - C(operation=drain) takes the instances named in O(servers) out of every model backend
    (HAProxy's C(drain) state, no new request, the running ones finish) and waits up to
    O(wait) seconds for their running requests to end.
  - C(operation=ready) puts them back and waits up to O(wait) seconds for HAProxy's health
    checks to see them up, so the next instance of a rollout is drained only once this one
    serves again.
  - A gateway that is not set up yet (no admin socket) has nothing to drain or return.
options:
  operation:
    description: What to do.
    type: str
    choices: [info, save_state, servers, drain, ready]
    default: info
  servers:
    description: Upstream ids of the instances to drain or return (C(u_HOST.INSTANCE)).
    type: list
    elements: str
    default: []
  socket:
    description: The admin socket (C(stats socket ... level admin)).
    type: path
    default: /run/vllama-gateway/admin.sock
  path:
    description: The server state file (with C(operation=save_state)).
    type: path
    default: /var/lib/vllama-gateway/server-state
  wait:
    description:
      - Seconds to wait for every model to have an instance up (C(operation=servers)), for the
        drained instances' requests to end (C(drain)) or for the returned ones to be up
        (C(ready)).
    type: int
    default: 0
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Read the HAProxy this host has or would install.
  vllama.provision.vllama_haproxy:
    operation: info

- name: Keep drained instances drained across the reload.
  vllama.provision.vllama_haproxy:
    operation: save_state
"""

RETURN = r"""
installed:
  description: Whether HAProxy is installed.
  returned: operation=info
  type: bool
version:
  description: The installed version, else the candidate of the package manager ('' unknown).
  returned: operation=info
  type: str
usable:
  description: Whether that HAProxy can run the gateway (false only when known not to).
  returned: operation=info
  type: bool
reason:
  description: Why it cannot, with what was found.
  returned: operation=info
  type: str
servers:
  description: Per model backend, each instance's status (UP, DOWN, DRAIN, MAINT, ...).
  returned: operation=servers
  type: dict
busy:
  description: Drained instances still running requests when O(wait) ran out.
  returned: operation=drain
  type: list
  elements: str
gaps:
  description: Drained instances whose model had no other instance up and in service.
  returned: operation=drain
  type: list
  elements: str
down:
  description: Models with no instance up (C(servers)); returned instances not up (C(ready)).
  returned: operation=servers or operation=ready
  type: list
  elements: str
"""

import os
import re
import socket
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

MINIMUM = (2, 5)


def _version_tuple(text):
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


def info(module):
    haproxy = module.get_bin_path("haproxy", opt_dirs=["/usr/sbin"])
    if haproxy:
        _rc, out, _err = module.run_command([haproxy, "-vv"])
        match = re.search(r"HAProxy version (\S+)", out)
        version = match.group(1) if match else ""
        lua = "USE_LUA=1" in out or "Built with Lua" in out
        reasons = []
        if not version or _version_tuple(version) < MINIMUM:
            reasons.append(f"HAProxy {version or '(unknown version)'} is installed; the gateway "
                           "needs 2.5 or newer (json_query routes by the body's model)")
        if not lua:
            reasons.append(f"HAProxy {version} is built without Lua (USE_LUA); the gateway "
                           "lists its live models with Lua")
        return {"installed": True, "version": version, "lua": lua,
                "usable": not reasons, "reason": "; ".join(reasons)}
    version = ""
    apt = module.get_bin_path("apt-cache")
    if apt:
        _rc, out, _err = module.run_command([apt, "policy", "haproxy"],
                                            environ_update={"LC_ALL": "C"})
        match = re.search(r"Candidate:\s*(\S+)", out)
        version = match.group(1) if match and match.group(1) != "(none)" else ""
    if version and _version_tuple(version) < MINIMUM:
        return {"installed": False, "version": version, "lua": None, "usable": False,
                "reason": f"the package manager offers HAProxy {version}; the gateway needs 2.5 "
                          "or newer (json_query routes by the body's model): Ubuntu 22.04 and "
                          "RHEL 9 ship 2.4, install a newer HAProxy from a vendor repository"}
    return {"installed": False, "version": version, "lua": None, "usable": True, "reason": ""}


def ask(path, command):
    """One command on HAProxy's admin socket; its whole answer."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    try:
        client.connect(path)
        client.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            chunk = client.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        client.close()
    return b"".join(chunks).decode("utf-8", "replace")


def save(module, sock, path):
    if not os.path.exists(sock):
        return False
    try:
        text = ask(sock, "show servers state")
    except OSError:
        return False
    if module.check_mode:
        return True
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".server-state-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return True


def stat_rows(sock):
    """The rows of ``show stat`` for the instances of the model backends (m_*)."""
    rows = []
    lines = ask(sock, "show stat").splitlines()
    if not lines or not lines[0].startswith("# "):
        return rows
    header = lines[0][2:].split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))  # noqa: B905 - modules run on Python 3.8+
        if row.get("pxname", "").startswith("m_") and \
                row.get("svname") not in ("FRONTEND", "BACKEND"):
            rows.append(row)
    return rows


def servers(sock):
    """{backend: {server: status}} for the model backends (m_*)."""
    found = {}
    for row in stat_rows(sock):
        found.setdefault(row["pxname"], {})[row["svname"]] = row.get("status", "")
    return found


def _busy(row):
    return int(row.get("scur") or 0) + int(row.get("qcur") or 0) > 0


def gaps(rows, ids):
    """The instances among ``ids`` whose model has no other instance up and in service: their
    model has a gap while they are out."""
    wanted = set(ids)
    serving = {}
    for row in rows:
        if row["svname"] not in wanted and row.get("status", "").startswith("UP"):
            serving[row["pxname"]] = True
    return sorted(r["svname"] for r in rows
                  if r["svname"] in wanted and not serving.get(r["pxname"]))


def set_state(module, sock, ids, state, wait):
    """Drain or return the instances ``ids``; (changed, the ones still busy or not up, the ones
    whose model has no other instance)."""
    wanted = set(ids)
    everything = stat_rows(sock)
    rows = [r for r in everything if r["svname"] in wanted]
    alone = gaps(everything, ids)
    target = "DRAIN" if state == "drain" else "UP"
    changed = any((r.get("status") == "DRAIN") != (state == "drain") for r in rows)
    if module.check_mode:
        return changed, [], alone
    for row in rows:
        answer = ask(sock, f"set server {row['pxname']}/{row['svname']} state {state}").strip()
        if answer:
            module.fail_json(msg=f"HAProxy refused to {state} {row['svname']}: {answer}")
    deadline = time.monotonic() + wait
    while True:
        rows = [r for r in stat_rows(sock) if r["svname"] in wanted]
        if state == "drain":
            pending = sorted(r["svname"] for r in rows if _busy(r))
        else:
            pending = sorted(r["svname"] for r in rows if not r.get("status", "").startswith(
                target))
        if not pending or time.monotonic() >= deadline:
            return changed, pending, alone
        time.sleep(0.5)


def main():
    module = AnsibleModule(
        argument_spec={
            "operation": {"type": "str",
                          "choices": ["info", "save_state", "servers", "drain", "ready"],
                          "default": "info"},
            "servers": {"type": "list", "elements": "str", "default": []},
            "socket": {"type": "path", "default": "/run/vllama-gateway/admin.sock"},
            "path": {"type": "path", "default": "/var/lib/vllama-gateway/server-state"},
            "wait": {"type": "int", "default": 0},
        },
        supports_check_mode=True,
    )
    operation = module.params["operation"]
    if operation == "info":
        module.exit_json(changed=False, **info(module))
    if operation == "save_state":
        module.exit_json(changed=False, saved=save(module, module.params["socket"],
                                                   module.params["path"]))
    if operation in ("drain", "ready"):
        sock = module.params["socket"]
        if not os.path.exists(sock):
            module.exit_json(changed=False, absent=True, busy=[], down=[], gaps=[])
        try:
            changed, pending, alone = set_state(module, sock, module.params["servers"],
                                                operation, module.params["wait"])
        except OSError as exc:
            module.fail_json(msg=f"the gateway's admin socket does not answer: {exc}")
        key = "busy" if operation == "drain" else "down"
        module.exit_json(changed=changed, gaps=alone if operation == "drain" else [],
                         **{key: pending})
    deadline = time.monotonic() + module.params["wait"]
    while True:
        try:
            found = servers(module.params["socket"])
        except OSError as exc:
            module.fail_json(msg=f"the gateway's admin socket does not answer: {exc}")
        waiting = [b for b, members in found.items()
                   if members and not any(s.startswith("UP") for s in members.values())]
        if not waiting or time.monotonic() >= deadline:
            module.exit_json(changed=False, servers=found, down=sorted(waiting))
        time.sleep(1)


if __name__ == "__main__":
    main()
