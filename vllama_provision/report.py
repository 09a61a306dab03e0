"""The run report: one shape for every command's ``--json`` output and its closing table.

    {"hosts": {NAME: {"status": "ok|changed|failed|refused|unreachable|skipped", "changed": N,
                      "failed_task": str|null, "error": str|null, "phase": str,
                      "instances": [{"name", "engine", "engine_version", "deploy", "release",
                                     "endpoint", "served_name", "verified", "verified_from",
                                     "ttft_ms", "tokens_per_s", "answer"}],
                      "notes": [str]}},
     "summary": {"ok": N, "changed": N, "failed": N, "refused": N, "unreachable": N,
                 "skipped": N, "exit_code": 0|1|2, "command": str}}
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vllama_provision.errors import EXIT_HOST_FAILED, EXIT_OK

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


@dataclass
class HostReport:
    status: str = "ok"
    changed: int = 0
    failed_task: str | None = None
    error: str | None = None
    phase: str = ""
    instances: list[InstanceReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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
        return {**counts, "exit_code": self.exit_code, "command": self.command}

    def to_dict(self) -> dict[str, Any]:
        return {"hosts": {name: asdict(h) for name, h in sorted(self.hosts.items())},
                "summary": self.summary()}

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
