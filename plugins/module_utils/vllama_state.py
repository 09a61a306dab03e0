"""Compare a vllama host with its whole desired state (the vllama_state module's logic).

Everything a converged host must have is checked at once: the service user and folders, each
engine's environment, each stored model's identity, each release's folder, links and manifest,
every rendered file by content hash, mode and owner, the key files' presence, owner, mode and
content (a salted digest), the ``current`` link, the units' state, enablement and pending
daemon-reload. Every difference is named, with the phases (install, configure, run) that
repair it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pwd
import stat
import subprocess

from ansible_collections.vllama.provision.plugins.module_utils import vllama_launchd as launchd
from ansible_collections.vllama.provision.plugins.module_utils.vllama_releases import (
    LAUNCHCTL,
    inspect_instances,
    launchd_state,
    read_history,
    read_json,
)

PHASES = ("install", "configure", "run")
KEY_DIGEST_ROUNDS = 100_000


def key_digest(key, salt):
    """A salted, slow digest of an API key: what a host's key file is compared by (the
    vllama_key_digests filter computes the desired one on the controller), so neither the key
    nor a fast hash of it ever travels in module arguments."""
    return hashlib.pbkdf2_hmac("sha256", key.strip().encode("utf-8"), bytes.fromhex(salt),
                               KEY_DIGEST_ROUNDS).hex()


class Differences:
    def __init__(self):
        self.items = []
        self.phases = set()

    def add(self, phase, text):
        self.items.append(text)
        self.phases.add(phase)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _owner(st):
    try:
        return pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return str(st.st_uid)


def check_file(diff, where, spec):
    """A rendered file: content hash, mode, owner."""
    path = spec["path"]
    try:
        st = os.lstat(path)
    except OSError:
        diff.add("configure", f"{where}: {path} is missing")
        return
    if not stat.S_ISREG(st.st_mode):
        diff.add("configure", f"{where}: {path} is not a regular file")
        return
    if _sha256(path) != spec["sha256"]:
        diff.add("configure", f"{where}: {path} differs from its rendered content")
    mode = spec.get("mode")
    if mode and stat.S_IMODE(st.st_mode) != int(mode, 8):
        diff.add("configure", f"{where}: {path} has mode {stat.S_IMODE(st.st_mode):04o}, "
                              f"not {mode}")
    owner = spec.get("owner")
    if owner and _owner(st) != owner:
        diff.add("configure", f"{where}: {path} is owned by {_owner(st)}, not {owner}")


def check_key(diff, exposed, where, spec):
    """A secret file: present, owned by whom it should be, readable by nobody else."""
    path = spec["path"]
    try:
        st = os.stat(path)
    except OSError:
        diff.add("configure", f"{where}: the key file {path} is missing")
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        diff.add("configure", f"{where}: the key file {path} has mode {mode:04o}: others could "
                              "read it")
        exposed.append(path)
    owner = spec.get("owner")
    if owner and _owner(st) != owner:
        diff.add("configure", f"{where}: the key file {path} is owned by {_owner(st)}, not "
                              f"{owner}")


def check_key_content(diff, where, path, salt, want):
    """The key file holds the key the inventory (or the controller's copy) says."""
    try:
        with open(path, encoding="utf-8") as handle:
            key = handle.read().strip()
    except OSError:
        return  # reported missing by check_key
    got = key_digest(key, salt)
    if not hmac.compare_digest(got, want["digest"]):
        diff.add("configure", f"{where}: the key file {path} holds another key than "
                              f"{want.get('source', 'the desired one')}")


def check_model(diff, where, model):
    """A stored model: present, and each of its files as its check recorded them (size, mtime,
    inode). Returns False when the model must be checked again."""
    path = model.get("path")
    if not path:
        return True
    if not os.path.exists(path):
        diff.add("install", f"{where}: the model {path} is missing")
        return True  # staged again, then checked
    if not model.get("record"):
        return True  # checked as it arrives (a downloaded snapshot): presence is what counts
    record = read_json(model["record"], None)
    if record is None or record.get("path") != path:
        diff.add("install", f"{where}: the model {path} has no identity record (it is checked "
                            "again)")
        return False
    before = len(diff.items)
    for rel, want in sorted((record.get("files") or {}).items()):
        full = os.path.join(path, rel) if rel else path
        try:
            st = os.stat(full)
        except OSError:
            diff.add("install", f"{where}: the model file {full} is missing")
            continue
        got = [st.st_size, st.st_mtime_ns, st.st_ino]
        if got != list(want):
            diff.add("install", f"{where}: the model file {full} changed since it was checked "
                                f"(size {want[0]} -> {st.st_size})")
    return len(diff.items) == before


def check_release(diff, where, inst):
    folder = inst["release_dir"]
    if not os.path.isdir(folder):
        diff.add("configure", f"{where}: the release folder {folder} is missing")
        return
    manifest = read_json(os.path.join(folder, "manifest.json"), None)
    if manifest != inst["manifest"]:
        diff.add("configure", f"{where}: the release's manifest.json differs")
    if not os.path.exists(os.path.join(folder, "created.json")):
        diff.add("configure", f"{where}: the release's created.json is missing")
    for link, target in sorted((inst.get("links") or {}).items()):
        try:
            got = os.readlink(link)
        except OSError:
            got = None
        if got != target:
            diff.add("configure", f"{where}: {link} points to {got or 'nothing'}, not {target}")


def pmset_values(text):
    """The numeric settings ``pmset -a`` takes, from ``pmset -g`` (its parser, in
    vllama_launchd); named settings such as "Sleep On Power Button" and paths left out."""
    return {name: value for name, value in launchd.parse_pmset(text).items()
            if name.isidentifier() and value.lstrip("-").isdigit()}


def pmset_changes(text, wanted):
    """(name, value now, value wanted) for each wanted setting ``pmset -g`` shows otherwise. A
    setting the Mac does not list (no autorestart on some models) is not its to have."""
    got = pmset_values(text or "")
    return [(name, got[name], str(value)) for name, value in sorted((wanted or {}).items())
            if name in got and got[name] != str(value)]


def check_macos(diff, macos):
    """A Mac's host settings: pmset's power settings and the GPU's wired limit."""
    root = macos.get("command_root") or ""
    out = subprocess.run([root + "/usr/bin/pmset", "-g"], capture_output=True, text=True,
                         check=False)
    for name, now, value in pmset_changes(out.stdout, macos.get("pmset")):
        diff.add("configure", f"pmset {name} is {now}, not {value}")
    wired = subprocess.run([root + "/usr/sbin/sysctl", "-n", "iogpu.wired_limit_mb"],
                           capture_output=True, text=True, check=False).stdout.strip()
    if wired != str(macos.get("wired_limit_mb", 0)):
        diff.add("configure", f"iogpu.wired_limit_mb is {wired or 'unreadable'}, not "
                              f"{macos.get('wired_limit_mb', 0)}")


def _launchd_properties(target):
    """A launchd job (``system/LABEL``) in systemctl show's terms: active when it runs,
    "enabled" when loaded (launchd starts a loaded LaunchDaemon's RunAtLoad job at boot)."""
    if not target.startswith("system/"):
        return {}
    job = launchd_state(target)
    return {"ActiveState": job["active"],
            "UnitFileState": "enabled" if job["loaded"] else "",
            "NeedDaemonReload": "yes" if job["need_reload"] else "no"}


def _unit_properties(units):
    units = [u for u in units if not u.startswith("system/")]
    if not units:
        return {}
    argv = ["systemctl", "show", "-p", "Id", "-p", "ActiveState", "-p", "UnitFileState",
            "-p", "NeedDaemonReload", *units]
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    found = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            found[props["Id"]] = props
    return found


def compare(desired, history_path, key_digests=None):
    diff = Differences()
    exposed = []
    user = desired.get("service_user")
    if user:
        try:
            pwd.getpwnam(user)
        except KeyError:
            diff.add("install", f"the service user {user} does not exist")
    for folder in desired.get("folders") or []:
        if not os.path.isdir(folder):
            diff.add("install", f"the folder {folder} is missing")
    if desired.get("macos"):
        LAUNCHCTL["path"] = (desired["macos"].get("command_root") or "") + "/bin/launchctl"
        check_macos(diff, desired["macos"])
    for spec in desired.get("files") or []:
        check_file(diff, "host", spec)
    instances = desired.get("instances") or []
    history = read_history(history_path)
    releases = inspect_instances(desired["install_root"], history,
                                 [i["name"] for i in instances],
                                 {i["name"]: i["unit"] for i in instances})
    units = _unit_properties([i["unit"] for i in instances if i.get("unit")])
    to_check = []
    for inst in instances:
        name = inst["name"]
        engine = inst.get("engine_python")
        if engine and not os.path.exists(engine):
            diff.add("install", f"{name}: the engine environment ({engine}) is missing")
        if not check_model(diff, name, inst.get("model") or {}):
            to_check.append(name)
        check_release(diff, name, inst)
        for spec in inst.get("files") or []:
            check_file(diff, name, spec)
        for spec in inst.get("keys") or []:
            check_key(diff, exposed, name, spec)
        want_key = ((key_digests or {}).get("keys") or {}).get(name)
        if want_key and inst.get("keys"):
            check_key_content(diff, name, inst["keys"][0]["path"], key_digests["salt"], want_key)
        if not inst.get("controller_key"):
            diff.add("configure", f"{name}: the controller has no copy of the key")
        state = releases.get(name) or {}
        if state.get("current") != inst["release"]:
            diff.add("run", f"{name}: current is {state.get('current') or 'nothing'}, not "
                            f"{inst['release']}")
        if state.get("pending"):
            diff.add("run", f"{name}: a switch to {state['pending'].get('to')} was never "
                            "verified")
        if state.get("stale"):
            diff.add("run", f"{name}: the engine started before the last switch")
        props = units.get(inst["unit"]) or _launchd_properties(inst["unit"])
        if props.get("ActiveState") != "active":
            diff.add("run", f"{name}: {inst['unit']} is {props.get('ActiveState', 'unknown')}")
        if props.get("UnitFileState") != "enabled":
            diff.add("run", f"{name}: {inst['unit']} is "
                            f"{props.get('UnitFileState') or 'not installed'}, not enabled")
        if props.get("NeedDaemonReload") == "yes":
            manager = "launchd" if inst["unit"].startswith("system/") else "systemd"
            diff.add("run", f"{name}: {manager} has not loaded the changed {inst['unit']}")
    # A phase that repairs files restarts what reads them: configure implies run.
    phases = set(diff.phases)
    if "configure" in phases or "install" in phases:
        phases.add("run")
    if "install" in phases:
        phases.add("configure")
    return {"differences": diff.items, "phases": [p for p in PHASES if p in phases],
            "exposed_keys": exposed, "models_to_check": to_check, "instances": releases}
