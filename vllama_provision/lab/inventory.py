"""The Ansible inventory ``lab up`` writes: plain YAML, every host self-contained."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from vllama_provision.lab import ssh
from vllama_provision.lab.host import HostPaths
from vllama_provision.lab.state import HostState, LabState


def host_vars(lab: str, host: HostState) -> dict[str, Any]:
    args = ssh.COMMON_OPTIONS
    if host.isolated:
        args += " " + ssh.proxy_command(HostPaths(lab, host.name).proxy)
    out: dict[str, Any] = {
        "ansible_host": host.address,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(ssh.key_path()),
        "ansible_ssh_common_args": args,
        "ansible_ssh_pipelining": True,
        # Lab hosts get fresh host keys at every boot. Mitogen's SSH puts its own
        # `StrictHostKeyChecking` (from this setting) before the arguments above, and ssh keeps
        # the first value it reads: without this, every lab host is unreachable under Mitogen.
        "ansible_host_key_checking": False,
        "ansible_python_interpreter": "/usr/bin/python3",
        "vllama_lab": lab,
    }
    if host.user:
        out["vllama_lab_become_user"] = host.user
    return out


def render(state: LabState) -> str:
    hosts = {h.name: host_vars(state.name, h) for h in sorted(state.hosts, key=lambda h: h.index)}
    doc = {"all": {"hosts": hosts}}
    head = (f"# Lab {state.name!r}, written by `vllama-provision lab up`; rewritten whenever the "
            "lab changes.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False,
                                 width=1_000_000)


def write(state: LabState, *extra: Path) -> Path:
    """Write the lab's inventory (and copies to ``extra`` paths); return the lab's own path."""
    own = state.dir / "inventory.yml"
    text = render(state)
    for path in (own, *extra):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return own
