"""What one host takes from a verified bundle (on the controller, inside the role's plugins).

``sources_for_host`` replaces the normal source resolution (``vllama_sources``) when the run
has a ``vllama_run_bundle`` extravar: models are copied from the bundle instead of downloaded,
the engine installs from the bundle's wheel set instead of the wheelhouse or an index, and the
host's OS packages come from the bundle's repository. Every bundle file the host will use is checked
against the manifest here, before anything on the host changes; the host checks them again
after they arrive (``vllama_bundle_check``).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from pathlib import Path
from typing import Any

from vllama_provision import paths
from vllama_provision.bundle import aptrepo, pipwheels
from vllama_provision.bundle.collect import model_key
from vllama_provision.bundle.manifest import Manifest, verify_files
from vllama_provision.bundle.targets import OSES, Target, os_from_facts
from vllama_provision.errors import BundleError
from vllama_provision.modelref import parse_model
from vllama_provision.models import StagedSource, _placed, resolve_source


def manifest_of(bundle: dict[str, Any]) -> tuple[Path, Manifest]:
    """The bundle folder and manifest from the ``vllama_run_bundle`` extravar."""
    return Path(bundle["dir"]), Manifest.from_dict(bundle["manifest"])


def host_target(platform: dict[str, Any]) -> Target | None:
    os_name = os_from_facts(platform)
    if not os_name or os_name not in OSES:
        return None
    python = ".".join(str(platform.get("python") or "3").split(".")[:2])
    return Target(os_name, str(platform.get("machine") or ""), python, "facts")


def _model(inst: dict[str, Any], plan: dict[str, Any], bundle_dir: Path,
           manifest: Manifest) -> tuple[StagedSource, list[str]]:
    raw, model_file = inst["model"]["raw"], inst["model_file"]
    entry = manifest.models.get(model_key(raw, model_file))
    zfs = {"zfs_dataset": plan["zfs_dataset"]} if plan.get("zfs_dataset") else {}
    if entry is None:
        ref = parse_model(raw)
        if ref.kind == "path":  # a model that lives on the host: nothing to bring
            local = Path(ref.path) / model_file if model_file else Path(ref.path)
            if not local.exists():
                return resolve_source(raw, model_file, inst["model_sha256"], plan["models_root"],
                                      **zfs), []
        raise BundleError(f"the bundle has no model {model_key(raw, model_file)}; bundle this "
                          "inventory again")
    ref = parse_model(raw)
    files: list[dict[str, Any]] = []
    if entry.get("folder"):  # a model folder or a Hugging Face snapshot, checked file by file
        prefix = f"{entry['path']}/"
        unlisted = [rel for rel in entry["files"] if rel not in manifest.files]
        if unlisted:
            raise BundleError(f"bundle file {unlisted[0]} is not in the manifest")
        files = [{"path": rel[len(prefix):], **manifest.files[rel]} for rel in entry["files"]]
    # A snapshot is stored under its commit (what a pinned download on the host would use);
    # everything else under its sha256 (a folder's tree digest).
    content_key = entry["commit"] if entry.get("folder") and ref.kind == "hf" else ""
    source = _placed("copy", ref, entry["file_name"], entry["sha256"], entry["size"],
                     plan["models_root"], local_path=str(bundle_dir / entry["path"]),
                     files=files, content_key=content_key, **zfs)
    return source, list(entry["files"])


def _image(inst: dict[str, Any], manifest: Manifest) -> dict[str, str]:
    """Where a container instance's image comes from: the bundle's archive of it. An image the
    bundle could not collect must already be on the host (apply says so if it is not); an
    ``image_archive`` the bundle lacks means the bundle is older than the inventory."""
    if inst["deploy"] != "container" or not inst.get("image"):
        return {"bundle_path": ""}
    entry = manifest.images.get(inst["image"]) or {}
    if entry.get("path"):
        return {"bundle_path": entry["path"]}
    if inst.get("image_archive"):
        raise BundleError(f"the bundle has no archive of {inst['image']} (its instance sets "
                          "image_archive); bundle this inventory again")
    return {"bundle_path": ""}


def sources_for_host(plan: dict[str, Any], platform: dict[str, Any],
                     bundle: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(sources as vllama_sources returns them, this host's part of the bundle)."""
    bundle_dir, manifest = manifest_of(bundle)
    target = host_target(platform)
    if target is None:
        raise BundleError(f"the bundle cannot serve this host: its OS "
                          f"({platform.get('distribution')} {platform.get('distribution_version')})"
                          f" is not one of {', '.join(OSES)}")
    sources: dict[str, Any] = {}
    staged: list[str] = []
    model_files: list[str] = []
    sets: dict[str, dict[str, Any]] = {}
    for inst in plan["instances"]:
        model, files = _model(inst, plan, bundle_dir, manifest)
        model_files += files
        wheel: dict[str, Any] = {"key": "", "dir": "", "wheels": [], "complete": True,
                                 "archive": "", "bundle_set": ""}
        package = inst.get("engine_package") or ""
        if inst["deploy"] == "native" and package:
            key = pipwheels.key_for_target(inst["server"], inst["engine_version"],
                                           inst["backend"], target)
            name = pipwheels.set_name(key, package, target, inst["backend"])
            entry = manifest.wheel_sets.get(name)
            if entry is None:
                have = ", ".join(sorted(manifest.wheel_sets)) or "none"
                raise BundleError(f"the bundle has no engine wheels for this host ({name}; it "
                                  f"has: {have}); set vllama_os/vllama_arch/vllama_python to "
                                  "what the host runs and bundle again")
            sets[name] = {"dir": entry["dir"], "requirements": entry["requirements"]}
            staged += entry["files"]
            wheel["bundle_set"] = name
        image = _image(inst, manifest)
        staged += [image["bundle_path"]] if image["bundle_path"] else []
        sources[inst["name"]] = {"model": model.to_dict(), "wheel": wheel, "image": image}
    apt: dict[str, Any] = {}
    entry = manifest.apt.get(target.apt_name)
    if target.family == "apt":
        if entry is None:
            raise BundleError(f"the bundle has no OS packages for {target.apt_name} (see its "
                              "not_collected list); bundle on a machine that can fetch them")
        containers = any(i["deploy"] == "container" for i in plan["instances"])
        packages = aptrepo.role_packages("Debian", containers)
        lacking = [p for p in packages if p not in entry["packages"]]
        if lacking:
            raise BundleError(f"the bundle's OS packages lack {', '.join(lacking)} (this host "
                              "has container instances now?); bundle this inventory again")
        apt = {"dir": entry["dir"], "packages": packages}
        staged += entry["files"]
    staged = sorted(set(staged))
    verify_files(bundle_dir, manifest, staged + model_files)
    host_part = {"id": manifest.bundle_id, "dir": str(bundle_dir), "files": staged,
                 "apt": apt, "wheel_sets": sets}
    return sources, host_part


def stage_archive(host_part: dict[str, Any], manifest: Manifest) -> tuple[Path, list[dict]]:
    """One tar of the host's part (content-addressed, shared by hosts that need the same
    files) and the file list with hashes the host checks after unpacking."""
    files = [{"path": rel, **manifest.files[rel]} for rel in host_part["files"]]
    digest = hashlib.sha256(repr(sorted((f["path"], f["sha256"]) for f in files)).encode())
    folder = paths.state_dir() / "bundle-stage"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    archive = folder / f"{digest.hexdigest()[:24]}.tar"
    if not archive.is_file():
        partial = folder / f".{archive.name}.{os.getpid()}"
        with tarfile.open(partial, "w") as tar:
            for item in files:
                tar.add(Path(host_part["dir"]) / item["path"], arcname=item["path"],
                        recursive=False)
        partial.replace(archive)
    for old in folder.glob("*.tar"):  # archives of other runs, older than a day
        if old != archive and old.stat().st_mtime < time.time() - 86400:
            old.unlink(missing_ok=True)
    return archive, files
