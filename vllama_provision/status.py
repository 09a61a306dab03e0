"""``vllama-provision status``: what each host runs now, read from the hosts (read-only).

Per host and instance: the current and previous release, the engine and version of the current
release, failed releases, a switch a killed run left unfinished, the service state, the
endpoint's health right now, and the host lock. Per NVIDIA host: the GPU health (NVML
initialises, driver and library versions agree, a module for the running kernel); an unhealthy
GPU makes the host unhealthy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vllama_provision import gpu_health
from vllama_provision.report import Report
from vllama_provision.runner import Progress, RunRequest, run_playbook
from vllama_provision.strategy import LINEAR, Strategy


def gather(inventory: Path, hosts: list[str],
           endpoints: dict[str, dict[str, str]] | None = None,
           strategy: Strategy = LINEAR,
           gateways: dict[str, dict[str, str]] | None = None) -> Report:
    """Ask each host (read-only) and return the status in the shared report shape.

    ``endpoints``: HOST -> INSTANCE -> the endpoint URL the inventory gives it (the hosts
    report their releases, not how clients reach them). ``gateways``: GATEWAY HOST -> its
    backends' served names (from the gateway plans), to show each gateway's view by model.
    """
    releases: dict[str, dict[str, Any]] = {}
    health: dict[str, gpu_health.GpuHealth] = {}
    servers: dict[str, dict[str, dict[str, str]]] = {}

    def on_event(event: dict[str, Any]) -> None:
        data = event.get("event_data") or {}
        res = data.get("res") or {}
        if event.get("event") != "runner_on_ok":
            return
        action = str(data.get("task_action", ""))
        if action.endswith("vllama_release"):
            releases[data["host"]] = res
        elif action.endswith("vllama_gpu_health"):
            found = gpu_health.from_result(res)
            if found is not None:
                health[data["host"]] = found
        elif action.endswith("vllama_haproxy") and isinstance(res.get("servers"), dict):
            names = (gateways or {}).get(data["host"], {})
            servers[data["host"]] = {names.get(b, b): states
                                     for b, states in res["servers"].items()}

    result = run_playbook(RunRequest(playbook="status.yml", inventory=inventory,
                                     command="status", limit=",".join(hosts),
                                     strategy=strategy),
                          progress=Progress(enabled=False), on_event=on_event)
    return shape(hosts, releases, health, result.report, endpoints,
                 {h: servers.get(h) for h in gateways or {}})


def _server_label(server: str) -> str:
    """``u_HOST.INSTANCE`` as HOST/INSTANCE."""
    host, _, instance = server.removeprefix("u_").rpartition(".")
    return f"{host}/{instance}" if host else server


def shape(hosts: list[str], releases: dict[str, dict[str, Any]],
          health: dict[str, gpu_health.GpuHealth], answered: Report,
          endpoints: dict[str, dict[str, str]] | None = None,
          gateways: dict[str, dict[str, dict[str, str]] | None] | None = None) -> Report:
    """The status report from what the hosts answered (their ``vllama_release`` inspect results
    and GPU health), in the order of ``hosts``.

    Shared fields: a host is ``ok`` when healthy, ``failed`` when it answered but is not,
    ``unreachable`` when it did not answer; an instance's ``release`` is its ``current`` one.
    A gateway host (``gateways``: HOST -> model -> {HOST/INSTANCE: state}, None when its
    gateway did not answer) adds ``gateway``: each model's instances and their state in it (UP,
    DOWN, DRAIN, ...); it is unhealthy when its gateway does not answer or a model has no
    instance up.
    Added fields: per host ``reachable``, ``healthy``, ``lock``, ``history``, ``gpu_health``;
    per instance ``previous``, ``releases``, ``failed_releases``, ``unfinished_switch``,
    ``stale``, ``service``, ``healthy``, ``health_detail``; in the summary ``hosts``,
    ``healthy`` (all of them) and ``unhealthy`` (their names).
    """
    report = Report(command="status")
    for host in hosts:
        entry = report.host(host)
        before = answered.hosts.get(host)
        res = releases.get(host)
        if res is None:
            entry.status = "unreachable"
            entry.error = (before.error if before else None) or "no answer"
            entry.extra = {"reachable": False, "healthy": False, "lock": None, "history": [],
                           "gpu_health": None}
            continue
        unhealthy: list[str] = []
        for name, inst in sorted((res.get("instances") or {}).items()):
            current = next((r for r in inst["releases"] if r["id"] == inst["current"]), {})
            probe = inst.get("endpoint") or {}
            item = entry.instance(name)
            item.release = inst["current"] or ""
            item.engine = current.get("engine", "")
            item.engine_version = current.get("engine_version", "")
            item.deploy = current.get("deploy", "")
            item.served_name = current.get("served_name", "")
            item.endpoint = (endpoints or {}).get(host, {}).get(name, "")
            item.extra = {
                "previous": inst["previous"],
                "releases": [r["id"] for r in inst["releases"]],
                "failed_releases": {r["id"]: r["failed"] for r in inst["releases"]
                                    if r.get("failed")},
                "unfinished_switch": inst.get("pending"),
                "stale": inst.get("stale", False),
                "service": inst["active"],
                "healthy": bool(probe.get("healthy")),
                "health_detail": probe.get("detail", ""),
            }
            if not probe.get("healthy"):
                unhealthy.append(f"{name}: endpoint down ({probe.get('detail', '')})")
            if inst.get("pending"):
                unhealthy.append(f"{name}: unfinished switch")
        gpu = health.get(host)
        unhealthy += [f"GPU: {p}" for p in gpu_health.problems(gpu)]
        is_gateway = host in (gateways or {})
        if not entry.instances and not is_gateway:
            unhealthy.append("no instances deployed")
        view = None
        if is_gateway:
            found = (gateways or {}).get(host)
            if found is None:
                unhealthy.append("gateway: not answering (vllama-gateway.service)")
            else:
                view = {model: {_server_label(s): state for s, state in sorted(states.items())}
                        for model, states in sorted(found.items())}
                unhealthy += [f"gateway: {model!r} has no instance up"
                              for model, states in view.items()
                              if not any(v.startswith("UP") for v in states.values())]
        entry.status = "failed" if unhealthy else "ok"
        entry.error = "; ".join(unhealthy) or None
        entry.extra = {"reachable": True, "healthy": not unhealthy, "lock": res.get("lock"),
                       "history": res.get("history") or [], "gpu_health": gpu}
        if is_gateway:
            entry.extra["gateway"] = view
    bad = sorted(h for h, e in report.hosts.items() if not e.extra["healthy"])
    report.summary_extra = {"hosts": len(report.hosts), "healthy": not bad, "unhealthy": bad}
    return report


def render(report: Report) -> str:
    rows = [("HOST", "INSTANCE", "CURRENT", "PREVIOUS", "ENGINE", "SERVICE", "ENDPOINT")]
    notes = []
    for host, entry in sorted(report.hosts.items()):
        if not entry.extra["reachable"]:
            rows.append((host, "-", "-", "-", "-", "-", "UNREACHABLE"))
            notes.append(f"{host}: {entry.error}")
            continue
        for inst in entry.instances:
            extra = inst.extra
            rows.append((host, inst.name, inst.release or "-", extra["previous"] or "-",
                         f"{inst.engine} {inst.engine_version}".strip() or "-",
                         extra["service"], "healthy" if extra["healthy"] else
                         f"DOWN ({extra['health_detail']})"))
            for rid, why in extra["failed_releases"].items():
                notes.append(f"{host}/{inst.name}: release {rid} FAILED: {why}")
            if extra["unfinished_switch"]:
                sw = extra["unfinished_switch"]
                notes.append(f"{host}/{inst.name}: a run switched {sw['from'] or 'nothing'} -> "
                             f"{sw['to']} and ended before verifying it (run {sw['run_id']}); "
                             "re-run it, or `rollback`")
            if extra["stale"]:
                notes.append(f"{host}/{inst.name}: the engine started before the last switch "
                             "(it runs an older release than `current`)")
        gateway = entry.extra.get("gateway")
        if not entry.instances and "gateway" not in entry.extra:
            rows.append((host, "-", "-", "-", "-", "-", "no instances deployed"))
        for model, states in (gateway or {}).items():
            where = ", ".join(f"{name} {state}" for name, state in states.items()) or "none"
            notes.append(f"{host}: gateway: {model!r}: {where}")
        gpu = entry.extra.get("gpu_health")
        if gpu and gpu["applicable"]:
            notes.append(f"{host}: {gpu_health.summary(gpu)}")
        lock = entry.extra.get("lock")
        if lock:
            notes.append(f"{host}: locked by run {lock.get('run_id', '?')} "
                         f"({lock.get('command', '?')}, controller {lock.get('controller', '?')}, "
                         f"pid {lock.get('pid', '?')}, since {lock.get('started', '?')})")
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    summary = report.summary_extra
    lines += notes
    lines.append(f"{summary['hosts']} host(s); " + (
        "all healthy" if summary["healthy"] else
        f"not healthy: {', '.join(summary['unhealthy'])}"))
    return "\n".join(lines)
