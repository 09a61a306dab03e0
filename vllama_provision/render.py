"""Rendering the files an instance runs from, with Ansible's own templating engine.

The same templates (``templates/``) and the same template variables are used on the host by the
role's ``ansible.builtin.template`` tasks and here by ``render`` and ``plan --diff``, with the
overrides Ansible's template action uses, so what the CLI shows is byte for byte what lands on
the host.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vllama_provision import gateway, monitoring, paths
from vllama_provision.gateway import GatewayPlan
from vllama_provision.monitoring import MonitoringPlan
from vllama_provision.planner import HostPlan, InstancePlan

# The header every rendered file starts with (through `{{ ansible_managed | comment }}`).
MANAGED = "Managed by vllama-provision: local changes are overwritten on the next apply."

# Ansible's template action defaults (plugins/action/template.py).
_OVERRIDES = {"trim_blocks": True, "lstrip_blocks": False, "newline_sequence": "\n"}


@dataclass
class RenderedFile:
    host: str
    instance: str
    template: str
    dest: str
    mode: str
    validator: str
    content: str


def template_vars(plan: HostPlan, instance: InstancePlan) -> dict[str, Any]:
    """The variables every template sees: the host plan, the instance plan and the release."""
    host = asdict(plan)
    host.pop("instances", None)
    return {"_vllama_host": host, "_vllama_instance": asdict(instance),
            "_vllama_release": instance.release, "ansible_managed": MANAGED}


def render_template(template: str, variables: dict[str, Any]) -> str:
    """Render one template from ``templates/`` exactly as Ansible's template module would."""
    with contextlib.redirect_stderr(io.StringIO()):
        from ansible.parsing.dataloader import DataLoader
        from ansible.template import Templar, trust_as_template

    root = paths.templates_dir()
    source = root / template
    text = trust_as_template(source.read_text(encoding="utf-8"))
    templar = Templar(loader=DataLoader(), variables=variables)
    env = templar.copy_with_new_env(searchpath=[str(root), str(source.parent)],
                                    available_variables=variables)
    result = env.template(text, escape_backslashes=False, overrides=_OVERRIDES)
    return "" if result is None else str(result)


def render_host(plan: HostPlan) -> list[RenderedFile]:
    """Every file of every instance of a host, with its destination on the host."""
    return [RenderedFile(host=plan.host, instance=label, template=spec["template"], dest=dest,
                         mode=spec["mode"], validator=spec["validator"],
                         content=render_template(spec["template"], variables))
            for label, spec, dest, variables in _host_files(plan)]


def rendered_digests(plan: HostPlan) -> list[dict[str, str]]:
    """The instance, destination, mode and content sha256 of every file :func:`render_host`
    renders, as the converged check compares them. A digest is remembered under the cache
    folder (``rendered/``), keyed by the template's name, every template's text, the variables
    and ansible-core's version, so a host whose inputs did not change is not rendered again."""
    return [{"instance": label, "dest": dest, "mode": spec["mode"],
             "sha256": _rendered_digest(spec["template"], variables)}
            for label, spec, dest, variables in _host_files(plan)]


def _host_files(plan: HostPlan) -> list[tuple[str, dict[str, str], str, dict[str, Any]]]:
    """(instance or "(host)", file spec, destination, template variables) of a host's files."""
    found: list[tuple[str, dict[str, str], str, dict[str, Any]]] = []
    if plan.files:  # a Mac's host-level files (log rotation, wired limit)
        host = asdict(plan)
        host.pop("instances", None)
        variables = {"_vllama_host": host, "_vllama_instances": [asdict(i) for i in plan.instances],
                     "ansible_managed": MANAGED}
        found += [("(host)", spec, spec["dest"], variables) for spec in plan.files]
    for instance in plan.instances:
        variables = template_vars(plan, instance)
        found += [(instance.name, spec, spec["dest"].replace("{release}", instance.release),
                   variables) for spec in instance.files]
    return found


@functools.lru_cache(maxsize=1)
def _templates_identity() -> str:
    """Every template's path and text, and ansible-core's version, as one digest."""
    from ansible import __version__ as ansible_version

    digest = hashlib.sha256(f"ansible-core {ansible_version}\n{_OVERRIDES}\n".encode())
    root = paths.templates_dir()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root)}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _rendered_digest(template: str, variables: dict[str, Any]) -> str:
    key = hashlib.sha256(json.dumps([_templates_identity(), template, variables], sort_keys=True,
                                    default=str).encode()).hexdigest()
    entry = paths.cache_dir() / "rendered" / key[:2] / key
    with contextlib.suppress(OSError, UnicodeDecodeError):
        known = entry.read_text(encoding="ascii").strip()
        if len(known) == 64:
            return known
    digest = hashlib.sha256(render_template(template, variables).encode("utf-8")).hexdigest()
    with contextlib.suppress(OSError):
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{key}.{os.getpid()}")
        tmp.write_text(digest + "\n", encoding="ascii")
        tmp.replace(entry)
    return digest


def _render_files(host: str, label: str, files: list[dict[str, str]],
                  variables: dict[str, Any]) -> list[RenderedFile]:
    """Render a fleet service's file specs (template, dest, mode, validator) for one host."""
    return [RenderedFile(host=host, instance=label, template=spec["template"], dest=spec["dest"],
                         mode=spec["mode"], validator=spec["validator"],
                         content=render_template(spec["template"], variables))
            for spec in files]


def render_gateway(plan: GatewayPlan) -> list[RenderedFile]:
    """Every rendered file of a gateway host (the key maps are not among them: the role writes
    them on the host from the controller's key copies, and nothing else ever holds them)."""
    return _render_files(plan.host, "(gateway)", plan.files,
                         gateway.template_vars(plan, MANAGED))


def render_monitoring(plan: MonitoringPlan) -> list[RenderedFile]:
    """Every rendered file of a monitoring host. Its web configuration holds the bcrypt hash of
    Prometheus' password (made on the controller on first use, like a generated key); the
    password itself and the llama-server credential files are written by the role only."""
    return _render_files(plan.host, "(monitoring)", plan.files, monitoring.template_vars(
        plan, MANAGED, monitoring.password_hash(plan)))


def render_exporter(host: str, plan: dict[str, Any]) -> list[RenderedFile]:
    """The node exporter's file of a host of a monitored fleet."""
    return _render_files(host, "(node exporter)", plan["files"],
                         {"_vllama_node_exporter": plan, "ansible_managed": MANAGED})


def render_dcgm(host: str, plan: dict[str, Any]) -> list[RenderedFile]:
    """The DCGM exporter's unit of an NVIDIA host of a monitored fleet (rendered only)."""
    return _render_files(host, "(dcgm exporter)", plan["files"],
                         {"_vllama_dcgm": plan, "ansible_managed": MANAGED})


def write_rendered(files: list[RenderedFile], out: Path) -> list[Path]:
    """Write rendered files under OUT/HOST/<absolute destination>."""
    written = []
    for item in files:
        target = out / item.host / item.dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(item.content, encoding="utf-8")
        target.chmod(int(item.mode, 8))
        written.append(target)
    return written
