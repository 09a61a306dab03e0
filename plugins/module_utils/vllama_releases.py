"""What a host runs: an instance's releases, links, service state and unfinished switches.

Shared by the ``vllama_release`` module (inspect, switch, prune) and the ``vllama_state`` module
(the converged check). Standard library only, Python 3.9 compatible.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time


def read_json(path, default):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default


def link_target(path):
    try:
        return os.path.basename(os.readlink(path).rstrip("/"))
    except OSError:
        return ""


def read_history(path):
    data = read_json(path, [])
    return data if isinstance(data, list) else []


def write_json_atomic(path, data, mode=0o644):
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".history-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def pending_switch(history, name):
    """The last switch of this instance when no outcome followed it (a killed run)."""
    for record in reversed(history):
        if record.get("instance") != name:
            continue
        if record.get("event") == "switched":
            return {"from": record.get("from", ""), "to": record.get("to", ""),
                    "run_id": record.get("run_id", ""), "time": record.get("time", "")}
        return None
    return None


def service_state(unit):
    """ActiveState, whether systemd needs a daemon-reload for it, and its main process start
    time as wall-clock seconds (None when it is not running)."""
    try:
        out = subprocess.run(
            ["systemctl", "show", unit, "-p", "ActiveState", "-p", "NeedDaemonReload",
             "-p", "ExecMainStartTimestampMonotonic", "-p", "ExecMainPID"],
            capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {"active": "unknown", "need_reload": False, "started": None}
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    started = None
    mono = int(props.get("ExecMainStartTimestampMonotonic") or 0)
    if mono and props.get("ExecMainPID", "0") != "0":
        started = time.time() - (time.clock_gettime(time.CLOCK_MONOTONIC) - mono / 1e6)
    return {"active": props.get("ActiveState", "unknown"),
            "need_reload": props.get("NeedDaemonReload") == "yes", "started": started}


def release_info(folder, rid):
    path = os.path.join(folder, rid)
    manifest = read_json(os.path.join(path, "manifest.json"), {})
    created = read_json(os.path.join(path, "created.json"), {})
    failed = None
    try:
        with open(os.path.join(path, "FAILED"), encoding="utf-8") as handle:
            failed = handle.read().strip() or "failed"
    except OSError:
        pass
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        mtime = 0.0
    return {"id": rid, "created": created.get("created", ""), "mtime": mtime,
            "engine": manifest.get("engine", ""), "server": manifest.get("server", ""),
            "engine_version": manifest.get("engine_version", ""),
            "deploy": manifest.get("deploy", ""),
            "served_name": manifest.get("served_name", ""),
            "local_endpoint": manifest.get("local_endpoint", ""),
            "readiness": manifest.get("readiness") or {},
            "model": manifest.get("model", ""), "prepared": bool(manifest), "failed": failed}


def instance_names(install_root, wanted):
    root = os.path.join(install_root, "instances")
    found = sorted(n for n in os.listdir(root)) if os.path.isdir(root) else []
    return list(wanted if wanted is not None else found)


def inspect_instances(install_root, history, wanted, units):
    """Per instance: current, previous, releases, an unfinished switch, the service state."""
    out = {}
    for name in instance_names(install_root, wanted):
        base = os.path.join(install_root, "instances", name)
        releases_dir = os.path.join(base, "releases")
        ids = sorted(os.listdir(releases_dir)) if os.path.isdir(releases_dir) else []
        releases = sorted((release_info(releases_dir, r) for r in ids),
                          key=lambda r: (r["created"], r["mtime"]))
        current_link = os.path.join(base, "current")
        service = service_state(units.get(name) or f"vllama-{name}.service")
        switched_at = None
        with contextlib.suppress(OSError):
            switched_at = os.lstat(current_link).st_mtime
        stale = bool(service["started"] and switched_at and service["started"] < switched_at)
        out[name] = {
            "current": link_target(current_link),
            "previous": link_target(os.path.join(base, "previous")),
            "releases": releases,
            "pending": pending_switch(history, name),
            "active": service["active"],
            "need_reload": service["need_reload"],
            # The engine was started before the last switch: it still runs the old release.
            "stale": stale,
        }
    return out
