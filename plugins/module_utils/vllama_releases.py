"""What a host runs: an instance's releases, links, service state and unfinished switches.

Shared by the ``vllama_release`` module (inspect, switch, prune) and the ``vllama_state`` module
(the converged check). Standard library only, Python 3.9 compatible.
"""

from __future__ import annotations

import contextlib
import json
import os
import plistlib
import subprocess
import tempfile
import time

from ansible_collections.vllama.provision.plugins.module_utils import vllama_launchd as launchd

# launchctl's path: /bin/launchctl on a Mac; the modules set it from their `launchctl` option
# (the tests' stand-in Mac keeps its imitation under another folder).
LAUNCHCTL = {"path": "/bin/launchctl"}


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


def elapsed_seconds(text):
    """``ps -o etime=`` ([[DD-]HH:]MM:SS, the same on macOS and Linux) in seconds."""
    text = text.strip()
    days, rest = text.rpartition("-")[::2]
    seconds = 0
    for part in rest.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def launchd_state(target):
    """A launchd job's state (``system/LABEL``) in service_state's shape: active when it runs,
    its process start time, and ``need_reload`` when the loaded job's arguments are not its
    plist's (the plist changed since it was bootstrapped)."""
    try:
        out = subprocess.run([LAUNCHCTL["path"], "print", target], capture_output=True,
                             text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return {"active": "unknown", "need_reload": False, "started": None, "loaded": False}
    if out.returncode != 0:
        return {"active": "inactive", "need_reload": False, "started": None, "loaded": False}
    job = launchd.parse_print(out.stdout)
    started = None
    if job.get("state") == "running" and job.get("pid"):
        etime = subprocess.run(["ps", "-o", "etime=", "-p", str(job["pid"])],
                               capture_output=True, text=True, check=False).stdout
        with contextlib.suppress(ValueError):
            started = time.time() - elapsed_seconds(etime) if etime.strip() else None
    label = target.split("/", 1)[1]
    plist = job.get("path") or f"/Library/LaunchDaemons/{label}.plist"
    need_reload = False
    try:
        with open(plist, "rb") as handle:
            wanted = plistlib.load(handle).get("ProgramArguments")
        need_reload = bool(job.get("arguments")) and wanted != job.get("arguments")
    except (OSError, ValueError, plistlib.InvalidFileException):
        need_reload = True  # loaded, but its plist is gone or unreadable
    return {"active": "active" if started is not None or job.get("state") == "running"
            else "inactive", "need_reload": need_reload, "started": started, "loaded": True,
            "pid": job.get("pid")}


def service_state(unit):
    """ActiveState, whether systemd needs a daemon-reload for it, and its main process start
    time as wall-clock seconds (None when it is not running). ``system/LABEL``: a launchd
    job's, in the same shape."""
    if unit.startswith("system/"):
        return launchd_state(unit)
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


def default_unit(name):
    """An instance's service when the caller names none: its launchd job where its
    LaunchDaemon exists (a Mac), else its systemd unit."""
    if os.path.exists(f"/Library/LaunchDaemons/org.vllama.{name}.plist"):
        return "system/org.vllama." + name
    return f"vllama-{name}.service"


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
        service = service_state(units.get(name) or default_unit(name))
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
