"""The run report: one shape for every command's ``--json`` output and its closing table.

    {"schema": 1,
     "hosts": {NAME: {"status": "ok|changed|failed|refused|unreachable|skipped", "changed": N,
                      "failed_task": str|null, "error": str|null, "phase": str,
                      "instances": [{"name", "engine", "engine_version", "deploy", "release",
                                     "endpoint", "served_name", "verified", "verified_from",
                                     "ttft_ms", "tokens_per_s", "answer", ...}],
                      "notes": [str], ...}},
     "summary": {"ok": N, "changed": N, "failed": N, "refused": N, "unreachable": N,
                 "skipped": N, "exit_code": 0|1|2, "command": str, ...},
     ...}

A command may add fields (``extra`` at each level, written beside the shared ones); it never
renames or retypes a shared one: ``shape_problems`` checks that, and every test that reads a
``--json`` report runs it. ``schema`` changes only when a shared field does.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vllama_provision.errors import EXIT_HOST_FAILED, EXIT_OK

SCHEMA = 1
STATUSES = ("ok", "changed", "failed", "refused", "unreachable", "skipped")
BAD_STATUSES = frozenset({"failed", "refused", "unreachable"})


@dataclass
class InstanceReport:
    name: str
    engine: str = ""
    engine_version: str = ""
    deploy: str = ""
    release: str = ""
    endpoint: str = ""
    served_name: str = ""
    verified: bool | None = None
    verified_from: list[str] = field(default_factory=list)
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class HostReport:
    status: str = "ok"
    changed: int = 0
    failed_task: str | None = None
    error: str | None = None
    phase: str = ""
    instances: list[InstanceReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add_planned(self, instances: list[Any]) -> None:
        """Record what the plan says of each instance (engine, version, release, endpoint)."""
        for inst in instances:
            item = self.instance(inst.name)
            item.engine, item.engine_version, item.deploy = (inst.engine, inst.engine_version,
                                                             inst.deploy)
            item.release, item.endpoint, item.served_name = (inst.release, inst.endpoint,
                                                             inst.served_name)

    def instance(self, name: str) -> InstanceReport:
        for inst in self.instances:
            if inst.name == name:
                return inst
        inst = InstanceReport(name=name)
        self.instances.append(inst)
        return inst


@dataclass
class Report:
    command: str
    hosts: dict[str, HostReport] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    summary_extra: dict[str, Any] = field(default_factory=dict)

    def host(self, name: str) -> HostReport:
        return self.hosts.setdefault(name, HostReport())

    @property
    def exit_code(self) -> int:
        bad = any(h.status in BAD_STATUSES for h in self.hosts.values())
        return EXIT_HOST_FAILED if bad else EXIT_OK

    def summary(self) -> dict[str, Any]:
        counts = {s: 0 for s in STATUSES}
        for h in self.hosts.values():
            counts[h.status] = counts.get(h.status, 0) + 1
        return _beside({**counts, "exit_code": self.exit_code, "command": self.command},
                       self.summary_extra)

    def to_dict(self) -> dict[str, Any]:
        return _beside({"schema": SCHEMA,
                        "hosts": {name: _flatten(asdict(h))
                                  for name, h in sorted(self.hosts.items())},
                        "summary": self.summary()}, self.extra)

    def write_json(self, target: str) -> None:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        if target == "-":
            sys.stdout.write(text)
        else:
            Path(target).write_text(text, encoding="utf-8")

    def table(self) -> str:
        """A per-host table for humans, one line per instance."""
        header = ("HOST", "STATUS", "CHANGED", "INSTANCE", "ENGINE", "RELEASE", "ENDPOINT",
                  "VERIFIED")
        rows: list[tuple[str, ...]] = [header]
        details: dict[int, str] = {}
        for name, h in sorted(self.hosts.items()):
            first = True
            for inst in h.instances or [InstanceReport(name="-")]:
                verified = ("-" if inst.verified is None else
                            ("yes (" + ", ".join(inst.verified_from) + ")") if inst.verified
                            else "NO")
                engine = f"{inst.engine} {inst.engine_version}".strip() or "-"
                rows.append((name if first else "", h.status if first else "",
                             str(h.changed) if first else "", inst.name, engine,
                             inst.release or "-", inst.endpoint or "-", verified))
                first = False
            if h.status in BAD_STATUSES and (h.failed_task or h.error):
                details[len(rows) - 1] = "    " + ": ".join(
                    p for p in (h.failed_task, h.error) if p)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = []
        for index, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if index in details:
                lines.append(details[index])
        counts = self.summary()
        lines.append(", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]) or "no hosts")
        return "\n".join(lines)


def _beside(shared: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``shared`` followed by the extra fields; an extra never replaces a shared field."""
    return {**shared, **{k: v for k, v in extra.items() if k not in shared}}


def _flatten(host: dict[str, Any]) -> dict[str, Any]:
    """A host (from asdict) with each level's ``extra`` written beside the shared fields."""
    host["instances"] = [_beside(i, i.pop("extra")) for i in host["instances"]]
    return _beside(host, host.pop("extra"))


HOST_FIELDS: dict[str, tuple[type, ...]] = {
    "status": (str,), "changed": (int,), "failed_task": (str, type(None)),
    "error": (str, type(None)), "phase": (str,), "instances": (list,), "notes": (list,)}
INSTANCE_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,), "engine": (str,), "engine_version": (str,), "deploy": (str,),
    "release": (str,), "endpoint": (str,), "served_name": (str,),
    "verified": (bool, type(None)), "verified_from": (list,),
    "ttft_ms": (int, float, type(None)), "tokens_per_s": (int, float, type(None)),
    "answer": (str, type(None))}


def shape_problems(doc: Any, command: str | None = None) -> list[str]:
    """What in a ``--json`` document breaks the shared report shape ([] when nothing)."""
    if not isinstance(doc, dict):
        return [f"the report is a {type(doc).__name__}, not a mapping"]
    problems = []
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema is {doc.get('schema')!r}, expected {SCHEMA}")
    hosts, summary = doc.get("hosts"), doc.get("summary")
    if not isinstance(hosts, dict):
        return [*problems, "hosts is not a mapping"]
    if not isinstance(summary, dict):
        return [*problems, "summary is not a mapping"]
    for name, host in hosts.items():
        problems += _fields(host, HOST_FIELDS, f"hosts.{name}")
        if isinstance(host, dict) and host.get("status") not in STATUSES:
            problems.append(f"hosts.{name}.status is {host.get('status')!r}")
        for index, inst in enumerate(host.get("instances") or []
                                     if isinstance(host, dict) else []):
            problems += _fields(inst, INSTANCE_FIELDS, f"hosts.{name}.instances[{index}]")
    counts = {s: summary.get(s) for s in STATUSES}
    problems += [f"summary.{s} is {v!r}, not a count" for s, v in counts.items()
                 if not isinstance(v, int)]
    if all(isinstance(v, int) for v in counts.values()):
        by_status = {s: sum(1 for h in hosts.values() if isinstance(h, dict)
                            and h.get("status") == s) for s in STATUSES}
        if counts != by_status:
            problems.append(f"summary counts {counts} do not match the hosts {by_status}")
    if summary.get("exit_code") not in (0, 1, 2):
        problems.append(f"summary.exit_code is {summary.get('exit_code')!r}")
    if command is not None and summary.get("command") != command:
        problems.append(f"summary.command is {summary.get('command')!r}, expected {command!r}")
    return problems


def _fields(item: Any, fields: dict[str, tuple[type, ...]], where: str) -> list[str]:
    if not isinstance(item, dict):
        return [f"{where} is not a mapping"]
    problems = []
    for key, types in fields.items():
        if key not in item:
            problems.append(f"{where}.{key} is missing")
        elif not isinstance(item[key], types) or (isinstance(item[key], bool)
                                                  and bool not in types):
            problems.append(f"{where}.{key} is {type(item[key]).__name__}, expected "
                            + " or ".join(t.__name__ for t in types))
    return problems
