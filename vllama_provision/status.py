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


def gather(inventory: Path, hosts: list[str]) -> dict[str, Any]:
    releases: dict[str, dict[str, Any]] = {}
    health: dict[str, gpu_health.GpuHealth] = {}

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

    result = run_playbook(RunRequest(playbook="status.yml", inventory=inventory,
                                     command="status", limit=",".join(hosts)),
                          progress=Progress(enabled=False), on_event=on_event)
    return shape(hosts, releases, health, result.report)


def shape(hosts: list[str], releases: dict[str, dict[str, Any]],
          health: dict[str, gpu_health.GpuHealth], report: Report) -> dict[str, Any]:
    """The status document from what the hosts answered (their ``vllama_release`` inspect
    results and GPU health), in the order of ``hosts``."""
    out: dict[str, Any] = {}
    for host in hosts:
        entry = report.hosts.get(host)
        res = releases.get(host)
        if res is None:
            out[host] = {"reachable": False, "healthy": False,
                         "error": (entry.error if entry else None) or "no answer",
                         "instances": {}, "lock": None, "history": [], "gpu_health": None}
            continue
        instances = {}
        for name, inst in sorted((res.get("instances") or {}).items()):
            current = next((r for r in inst["releases"] if r["id"] == inst["current"]), {})
            instances[name] = {
                "current": inst["current"], "previous": inst["previous"],
                "engine": current.get("engine", ""),
                "engine_version": current.get("engine_version", ""),
                "served_name": current.get("served_name", ""),
                "releases": [r["id"] for r in inst["releases"]],
                "failed_releases": {r["id"]: r["failed"] for r in inst["releases"]
                                    if r.get("failed")},
                "unfinished_switch": inst.get("pending"),
                "stale": inst.get("stale", False),
                "service": inst["active"],
                "endpoint": inst.get("endpoint") or {},
            }
        gpu = health.get(host)
        healthy = (bool(instances) and not gpu_health.problems(gpu)
                   and all(i["endpoint"].get("healthy") and not i["unfinished_switch"]
                           for i in instances.values()))
        out[host] = {"reachable": True, "healthy": healthy, "error": None,
                     "instances": instances, "lock": res.get("lock"),
                     "history": res.get("history") or [], "gpu_health": gpu}
    return {"hosts": out,
            "summary": {"hosts": len(out), "healthy": all(h["healthy"] for h in out.values()),
                        "unhealthy": sorted(h for h, d in out.items() if not d["healthy"])}}


def render(data: dict[str, Any]) -> str:
    rows = [("HOST", "INSTANCE", "CURRENT", "PREVIOUS", "ENGINE", "SERVICE", "ENDPOINT")]
    notes = []
    for host, entry in sorted(data["hosts"].items()):
        if not entry["reachable"]:
            rows.append((host, "-", "-", "-", "-", "-", "UNREACHABLE"))
            notes.append(f"{host}: {entry['error']}")
            continue
        for name, inst in entry["instances"].items():
            health = inst["endpoint"]
            rows.append((host, name, inst["current"] or "-", inst["previous"] or "-",
                         f"{inst['engine']} {inst['engine_version']}".strip() or "-",
                         inst["service"], "healthy" if health.get("healthy") else
                         f"DOWN ({health.get('detail', '')})"))
            for rid, why in inst["failed_releases"].items():
                notes.append(f"{host}/{name}: release {rid} FAILED: {why}")
            if inst["unfinished_switch"]:
                sw = inst["unfinished_switch"]
                notes.append(f"{host}/{name}: a run switched {sw['from'] or 'nothing'} -> "
                             f"{sw['to']} and ended before verifying it (run {sw['run_id']}); "
                             "re-run it, or `rollback`")
            if inst["stale"]:
                notes.append(f"{host}/{name}: the engine started before the last switch "
                             "(it runs an older release than `current`)")
        if not entry["instances"]:
            rows.append((host, "-", "-", "-", "-", "-", "no instances deployed"))
        gpu = entry.get("gpu_health")
        if gpu and gpu["applicable"]:
            notes.append(f"{host}: {gpu_health.summary(gpu)}")
        lock = entry.get("lock")
        if lock:
            notes.append(f"{host}: locked by run {lock.get('run_id', '?')} "
                         f"({lock.get('command', '?')}, controller {lock.get('controller', '?')}, "
                         f"pid {lock.get('pid', '?')}, since {lock.get('started', '?')})")
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    summary = data["summary"]
    lines += notes
    lines.append(f"{summary['hosts']} host(s); " + (
        "all healthy" if summary["healthy"] else
        f"not healthy: {', '.join(summary['unhealthy'])}"))
    return "\n".join(lines)
