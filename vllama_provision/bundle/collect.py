"""Building a bundle: everything an inventory's hosts need, collected without contacting them.

Each item (a wheel set, a package repository, a model, an image) has a recipe: what it is made
from (the engine requirement and the target, the package list, the model reference...). When the
previous bundle in the same folder is signed by the same key, has an item with the same recipe and
its files still match their hashes, the item is reused without any download; ``refresh`` resolves
everything again (new dependency releases, security updates). Files are then placed in the
folder, copying only those whose content changed; files no item needs any more are removed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vllama_provision import __version__, paths
from vllama_provision import facts as fact_cache
from vllama_provision.bundle import aptrepo, pipwheels, signing
from vllama_provision.bundle.manifest import (
    CONTENT_DIRS,
    MANIFEST,
    PUBLIC_KEY_COPY,
    SIGNATURE,
    Manifest,
    sha256_file,
)
from vllama_provision.bundle.targets import Target, target_for
from vllama_provision.errors import BundleError, BundleSignatureError, UsageError, VllamaError
from vllama_provision.inventory import HostSpec, load_inventory
from vllama_provision.modelref import parse_model
from vllama_provision.models import (
    cached_sha256,
    controller_content,
    fetch_pypi,
    tree_digest,
    tree_files,
)
from vllama_provision.planner import EngineOverride, HostPlan, plan_host
from vllama_provision.report import Report


@dataclass
class Item:
    """One line of the bundle report."""

    kind: str  # wheels | apt | model | image
    name: str
    status: str  # fetched | reused | not collected | on host
    hosts: list[str] = field(default_factory=list)
    detail: str = ""
    files: int = 0
    bytes: int = 0

    @property
    def missing(self) -> bool:
        return self.status == "not collected"


@dataclass
class BundleResult:
    out: Path
    manifest: Manifest
    items: list[Item]
    public_key: Path
    key_created: bool
    seconds: float
    copied: int = 0

    @property
    def size(self) -> int:
        return sum(int(e["size"]) for e in self.manifest.files.values())

    @property
    def complete(self) -> bool:
        return not self.manifest.not_collected and not any(i.missing for i in self.items)

    def report(self) -> Report:
        """The bundle in the shared report shape: a host is ``ok`` when everything it needs
        was collected, ``failed`` (with what is missing) when not; ``bundle`` per host is its
        manifest record, and the bundle's own fields sit at the top level."""
        report = Report(command="bundle")
        for name, record in sorted(self.manifest.hosts.items()):
            entry = report.host(name)
            missing = [n["what"] for n in self.manifest.not_collected
                       if name in n["hosts"].split(", ")]
            if missing:
                entry.status, entry.error = "failed", "not collected: " + ", ".join(missing)
            entry.extra = {"bundle": record}
        report.extra = {k: v for k, v in self.to_dict().items() if k not in ("command", "hosts")}
        return report

    def to_dict(self) -> dict[str, Any]:
        return {"command": "bundle", "out": str(self.out), "bundle_id": self.manifest.bundle_id,
                "complete": self.complete, "size_bytes": self.size,
                "files": len(self.manifest.files), "files_copied": self.copied,
                "seconds": round(self.seconds, 1), "public_key": str(self.public_key),
                "key_created": self.key_created, "items": [asdict(i) for i in self.items],
                "hosts": self.manifest.hosts}


@dataclass
class _Wanted:
    """A file the new bundle holds: where its content is now, and its hash."""

    source: Path
    sha256: str
    size: int


@dataclass
class _Host:
    spec: HostSpec
    target: Target
    plan: HostPlan


class _Builder:
    def __init__(self, out: Path, previous: Manifest | None, refresh: bool,
                 echo: Callable[[str], None]):
        self.out = out
        self.previous = previous
        self.refresh = refresh
        self.echo = echo
        self.wanted: dict[str, _Wanted] = {}
        self.manifest = Manifest(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 tool_version=__version__)
        self.items: list[Item] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="vllama-bundle-"))

    # -- reuse --------------------------------------------------------------------------------
    def _reusable(self, section: str, name: str, recipe: dict[str, Any]) -> dict[str, Any] | None:
        """The previous bundle's entry when its recipe is the same and its files still match."""
        if self.refresh or self.previous is None:
            return None
        entry = getattr(self.previous, section).get(name)
        if not entry or entry.get("recipe") != recipe:
            return None
        for rel in entry.get("files") or []:
            known = self.previous.files.get(rel)
            path = self.out / rel
            if (not known or not path.is_file() or path.stat().st_size != known["size"]
                    or sha256_file(path) != known["sha256"]):
                return None
        return entry

    def _reused(self, section: str, kind: str, name: str, recipe: dict[str, Any],
                hosts: list[str]) -> bool:
        """Take the previous bundle's item when it is reusable (its files are kept as they are);
        False when it must be collected."""
        entry = self._reusable(section, name, recipe)
        if entry is None:
            return False
        assert self.previous is not None
        for rel in entry.get("files") or []:
            known = self.previous.files[rel]
            self.wanted[rel] = _Wanted(self.out / rel, known["sha256"], known["size"])
        getattr(self.manifest, section)[name] = entry
        self._item(Item(kind, name, "reused", hosts), entry["files"])
        return True

    def _want(self, rel: str, source: Path, sha256: str = "") -> None:
        self.wanted[rel] = _Wanted(source, sha256 or sha256_file(source),
                                   source.stat().st_size)

    def _item(self, item: Item, files: list[str]) -> Item:
        item.files = len(files)
        item.bytes = sum(self.wanted[f].size for f in files if f in self.wanted)
        self.items.append(item)
        where = f" for {', '.join(item.hosts)}" if item.hosts else ""
        detail = f": {item.detail}" if item.detail else ""
        self.echo(f"  {item.kind} {item.name}{where}: {item.status}{detail}")
        return item

    # -- wheels -------------------------------------------------------------------------------
    def wheels(self, name: str, requirement: str, key: Any, target: Target,
               hosts: list[str]) -> None:
        recipe = {"requirement": requirement, "os": target.os, "arch": target.arch,
                  "python": target.python, "key": name}
        folder = f"wheels/{name}"
        if self._reused("wheel_sets", "wheels", name, recipe, hosts):
            return
        log = paths.cache_dir() / "wheelhouse" / f"{name}.log"
        try:
            _work, wheels = pipwheels.collect(requirement, key, target, log, self.tmp)
        except BundleError as exc:
            self.manifest.not_collected.append({"what": f"wheels {name}", "why": str(exc),
                                                "hosts": ", ".join(hosts)})
            self._item(Item("wheels", name, "not collected", hosts, str(exc)), [])
            return
        requirements = self.tmp / f"{name}-requirements.txt"
        requirements.write_text(pipwheels.requirements_text(wheels, requirement))
        files = []
        for wheel in wheels:
            rel = f"{folder}/{wheel.name}"
            self._want(rel, wheel.resolve())
            files.append(rel)
        rel_req = f"{folder}/{pipwheels.REQUIREMENTS}"
        self._want(rel_req, requirements)
        files.append(rel_req)
        self.manifest.wheel_sets[name] = {"recipe": recipe, "requirement": requirement,
                                          "dir": folder, "requirements": rel_req,
                                          "files": sorted(files)}
        self._item(Item("wheels", name, "fetched", hosts, f"{len(wheels)} wheels"), files)

    # -- OS packages --------------------------------------------------------------------------
    def apt(self, target: Target, packages: list[str], hosts: list[str]) -> None:
        name = target.apt_name
        recipe = {"target": name, "packages": sorted(packages)}
        if self._reused("apt", "apt", name, recipe, hosts):
            return
        why = aptrepo.cannot_fetch(target)
        if why:
            self.manifest.not_collected.append({"what": f"OS packages {name}", "why": why,
                                                "hosts": ", ".join(hosts)})
            self._item(Item("apt", name, "not collected", hosts, why), [])
            return
        debs = aptrepo.records(aptrepo.resolve(packages))
        have, downloaded = aptrepo.fetch(debs, target)
        repo = self.tmp / "apt" / name
        repo.mkdir(parents=True)
        folder = f"apt/{name}"
        files = []
        for deb in debs:
            rel = f"{folder}/{deb.file_name}"
            self._want(rel, have[deb.file_name], deb.sha256)
            files.append(rel)
        for meta in aptrepo.write_repository(repo, list(have.values()),
                                             aptrepo.DEB_ARCH[target.arch]):
            self._want(f"{folder}/{meta}", repo / meta)
            files.append(f"{folder}/{meta}")
        self.manifest.apt[name] = {"recipe": recipe, "dir": folder, "packages": sorted(packages),
                                   "debs": [f"{d.package}={d.version}" for d in debs],
                                   "files": sorted(files)}
        self._item(Item("apt", name, "fetched", hosts,
                        f"{len(debs)} packages ({len(downloaded)} downloaded now)"), files)

    # -- models -------------------------------------------------------------------------------
    def model(self, raw: str, model_file: str, pinned: str, hosts: list[str],
              hf_endpoint: str, token_file: str = "") -> None:
        key = model_key(raw, model_file)
        recipe: dict[str, Any] = {"model": raw, "model_file": model_file, "model_sha256": pinned}
        ref = parse_model(raw)
        local = None
        if ref.kind == "path":  # a controller file or folder may change under the same name
            local = Path(ref.path) / model_file if model_file else Path(ref.path)
            recipe["content"] = controller_content(ref, model_file)
        if self._reused("models", "model", key, recipe, hosts):
            return
        try:
            if ref.kind == "pypi":
                source, digest = fetch_pypi(ref)
                self._model_file(key, recipe, ref.kind, source, digest, "", pinned, hosts)
            elif ref.kind == "path" and local is not None and local.is_file():
                self._model_file(key, recipe, ref.kind, local, recipe["content"], "", pinned,
                                 hosts)
            elif ref.kind == "path" and local is not None and local.is_dir():
                folder = f"models/{recipe['content']}/{local.name}"
                self._model_folder(key, recipe, ref.kind, local, tree_files(local), folder,
                                   local.name, "", pinned, hosts)
            elif ref.kind == "path":
                self._item(Item("model", key, "on host", hosts,
                                f"{local} is not on this controller: the host must have it"), [])
            elif model_file:
                source, digest, commit = self._hf(ref, model_file, pinned, hf_endpoint,
                                                  token_file)
                self._model_file(key, recipe, ref.kind, source, digest, commit, pinned, hosts)
            else:
                source, files, commit = self._hf_snapshot(ref, hf_endpoint, token_file)
                self._model_folder(key, recipe, ref.kind, source, files,
                                   f"models/hf/{ref.slug}/{commit}", "", commit, pinned, hosts)
        except (VllamaError, _HfUnavailable) as exc:
            self.manifest.not_collected.append({"what": f"model {key}", "why": str(exc),
                                                "hosts": ", ".join(hosts)})
            self._item(Item("model", key, "not collected", hosts, str(exc)), [])

    def _model_file(self, key: str, recipe: dict[str, Any], kind: str, source: Path,
                    digest: str, commit: str, pinned: str, hosts: list[str]) -> None:
        if pinned and pinned != digest:
            raise BundleError(f"{recipe['model']}: model_sha256 {pinned} does not match the "
                              f"file ({digest})")
        rel = f"models/{digest}/{source.name}"
        self._want(rel, source, digest)
        self.manifest.models[key] = {"recipe": recipe, "kind": kind, "path": rel,
                                     "file_name": source.name, "sha256": digest,
                                     "size": source.stat().st_size, "commit": commit,
                                     "files": [rel]}
        self._item(Item("model", key, "fetched", hosts), [rel])

    def _model_folder(self, key: str, recipe: dict[str, Any], kind: str, source: Path,
                      files: list[dict[str, Any]], folder: str, file_name: str, commit: str,
                      pinned: str, hosts: list[str]) -> None:
        """A model folder (a controller folder, a Hugging Face snapshot): every file in the
        manifest with its own hash; the entry's sha256 is the folder's tree digest."""
        digest = tree_digest(files)
        if pinned and pinned != digest:
            raise BundleError(f"{recipe['model']}: model_sha256 {pinned} does not match the "
                              f"folder (its tree digest is {digest})")
        rels = []
        for entry in files:
            rel = f"{folder}/{entry['path']}"
            self._want(rel, source / entry["path"], entry["sha256"])
            rels.append(rel)
        self.manifest.models[key] = {"recipe": recipe, "kind": kind, "path": folder,
                                     "folder": True, "file_name": file_name, "sha256": digest,
                                     "size": sum(int(f["size"]) for f in files),
                                     "commit": commit, "files": sorted(rels)}
        self._item(Item("model", key, "fetched", hosts,
                        f"{len(files)} files" + (f" at {commit[:12]}" if commit else "")), rels)

    def _hf_fetch(self, ref: Any, endpoint: str, token_file: str, wanted: list[str],
                  pinned: str) -> tuple[Path, str, list[dict[str, Any]]]:
        """Resolve the revision to its commit and download ``wanted`` (or, empty, the files an
        engine loads) into the cache, each checked against the Hub's hash as it arrives."""
        hub = _hf_module()
        token = _token(token_file)
        try:
            commit, _files = hub.list_files(endpoint.rstrip("/"), ref.repo,
                                            ref.revision or "main", token)
            dest = paths.cache_dir() / "bundle" / "hf" / ref.slug / commit
            _changed, commit, chosen = hub.download(endpoint, ref.repo, commit, str(dest),
                                                    wanted, pinned, token)
        except hub.DownloadError as exc:
            raise _HfUnavailable(f"the Hub is not reachable from here or refused: {exc}") from None
        return dest, commit, chosen

    def _hf(self, ref: Any, model_file: str, pinned: str, endpoint: str,
            token_file: str) -> tuple[Path, str, str]:
        dest, commit, chosen = self._hf_fetch(ref, endpoint, token_file, [model_file], pinned)
        local = dest / chosen[0]["path"]
        return local, sha256_file(local), commit

    def _hf_snapshot(self, ref: Any, endpoint: str,
                     token_file: str) -> tuple[Path, list[dict[str, Any]], str]:
        """A whole Hugging Face snapshot at the revision's commit (configs, tokenizer,
        safetensors)."""
        dest, commit, chosen = self._hf_fetch(ref, endpoint, token_file, [], "")
        if not chosen:
            raise _HfUnavailable(f"{ref.repo}@{commit} has no model files (configs, tokenizer, "
                                 "safetensors)")
        files = [{"path": c["path"], "sha256": sha256_file(dest / c["path"]),
                  "size": (dest / c["path"]).stat().st_size} for c in chosen]
        return dest, sorted(files, key=lambda f: f["path"]), commit

    # -- images -------------------------------------------------------------------------------
    def image(self, image: str, hosts: list[str], archive: str = "") -> None:
        """A container image: the instance's ``image_archive`` (a ``docker save`` archive on
        this controller) when it has one, else ``docker save`` from this machine's Docker
        engine."""
        if archive and Path(archive).is_file():
            local = Path(archive)
            digest = cached_sha256(local)
            recipe = {"image": image, "archive_sha256": digest}
            if self._reused("images", "image", image, recipe, hosts):
                return
            rel = f"images/{digest}/{local.name}"
            self._want(rel, local, digest)
            self.manifest.images[image] = {"status": "collected", "source": "image_archive",
                                           "recipe": recipe, "sha256": digest, "path": rel,
                                           "files": [rel]}
            self._item(Item("image", image, "fetched", hosts, f"from {local}"), [rel])
            return
        docker = shutil.which("docker")
        engine = docker and subprocess.run([docker, "info"], capture_output=True,
                                           check=False).returncode == 0
        if not engine:
            why = ("no Docker engine on this controller (docker save needs one); or set the "
                   "instance's image_archive to a `docker save` archive of the image")
            self.manifest.images[image] = {"status": "not collected: no Docker engine"}
            self.manifest.not_collected.append({"what": f"image {image}", "why": why,
                                                "hosts": ", ".join(hosts)})
            self._item(Item("image", image, "not collected", hosts, why), [])
            return
        assert docker is not None
        pulled = subprocess.run([docker, "pull", "-q", image], capture_output=True, text=True,
                                check=False)
        if pulled.returncode != 0:
            why = f"docker pull failed: {pulled.stderr.strip()[-300:]}"
            self.manifest.not_collected.append({"what": f"image {image}", "why": why,
                                                "hosts": ", ".join(hosts)})
            self._item(Item("image", image, "not collected", hosts, why), [])
            return
        digest = subprocess.run([docker, "image", "inspect", "--format",
                                 "{{index .RepoDigests 0}}", image], capture_output=True,
                                text=True, check=False).stdout.strip()
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in image)[:120]
        tar = self.tmp / f"{safe}.tar"
        subprocess.run([docker, "save", "-o", str(tar), image], check=True)
        rel = f"images/{safe}.tar"
        self._want(rel, tar)
        self.manifest.images[image] = {"status": "collected", "source": "docker save",
                                       "digest": digest, "path": rel, "files": [rel]}
        self._item(Item("image", image, "fetched", hosts, digest), [rel])

    # -- placing ------------------------------------------------------------------------------
    def place(self) -> int:
        """Put every wanted file in the bundle folder (copying only changed content) and
        remove the files no item needs; returns the number of files copied."""
        copied = 0
        for rel, want in sorted(self.wanted.items()):
            target = self.out / rel
            same = target.resolve() == want.source.resolve() or (
                target.is_file() and target.stat().st_size == want.size
                and sha256_file(target) == want.sha256)
            if not same:
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".partial-{target.name}")
                shutil.copyfile(want.source, partial)
                partial.replace(target)
                copied += 1
            self.manifest.files[rel] = {"sha256": want.sha256, "size": want.size}
        for top in CONTENT_DIRS:
            root = self.out / top
            for path in sorted(root.rglob("*"), reverse=True) if root.is_dir() else []:
                rel = str(PurePosixPath(*path.relative_to(self.out).parts))
                if path.is_file() and rel not in self.wanted:
                    path.unlink()
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
        return copied


class _HfUnavailable(Exception):
    pass


def _token(token_file: str) -> str:
    """The Hugging Face token of vllama_hf_token_file ('' without one); never printed."""
    if not token_file:
        return ""
    try:
        return Path(token_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise _HfUnavailable(f"cannot read vllama_hf_token_file {token_file}: "
                             f"{exc.strerror}") from None


def _hf_module() -> Any:
    """The role's Hugging Face download module (standard library only), reused as is."""
    return paths.load_plugin_file("modules/vllama_hf_download.py", "vllama_hf_download_bundle")


def model_key(raw: str, model_file: str) -> str:
    return f"{raw}|{model_file}" if model_file else raw


def _hosts(inventory: Path, limit: str | None,
           override: EngineOverride | None = None) -> list[_Host]:
    inv = load_inventory(inventory, limit)
    hosts, problems = [], []
    for spec in inv:
        cached = fact_cache.load(inventory, spec.name)
        target, why = target_for(spec.vars, dict(cached) if cached else None)
        plan = plan_host(spec, cached, override)
        if target is None:
            problems.append(f"host {spec.name}: {why}")
            continue
        if plan.platform is None:
            problems.append(f"host {spec.name}: vllama_platform unknown: set it in the inventory "
                            "(or run `vllama-provision facts INVENTORY --save`)")
            continue
        hosts.append(_Host(spec, target, plan))
    if problems:
        raise UsageError("cannot bundle without knowing each host (nothing was fetched):\n  "
                         + "\n  ".join(problems))
    return hosts


def _previous(out: Path, key: signing.SigningKey, echo: Callable[[str], None]) -> Manifest | None:
    """The bundle already in ``out``, when its signature verifies with our key (else nothing
    in it is reused)."""
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        signing.verify(manifest_path, out / SIGNATURE, key.public)
        return Manifest.loads(manifest_path.read_bytes())
    except (BundleSignatureError, BundleError) as exc:
        echo(f"  the bundle in {out} is not reused: {exc}")
        return None


def build(inventory: Path, out: Path, *, limit: str | None = None,
          sign_key: Path | None = None, refresh: bool = False,
          override: EngineOverride | None = None,
          echo: Callable[[str], None] = print) -> BundleResult:
    """Collect and sign a bundle for the inventory's hosts into ``out`` (with ``override``,
    for the engine version an ``upgrade --engine E --version V`` installs)."""
    started = time.monotonic()
    hosts = _hosts(inventory, limit, override)  # bad input fails before anything is fetched
    key = signing.ensure_key(sign_key)
    out.mkdir(parents=True, exist_ok=True)
    builder = _Builder(out, _previous(out, key, echo), refresh, echo)
    try:
        _collect(builder, hosts)
        copied = builder.place()
    finally:
        shutil.rmtree(builder.tmp, ignore_errors=True)
    manifest_path = out / MANIFEST
    partial = out / f".{MANIFEST}.partial"
    partial.write_bytes(builder.manifest.dumps())
    partial.replace(manifest_path)
    signing.sign(manifest_path, key)
    shutil.copyfile(key.public, out / PUBLIC_KEY_COPY)
    return BundleResult(out, builder.manifest, builder.items, key.public, key.created,
                        time.monotonic() - started, copied)


def _collect(builder: _Builder, hosts: list[_Host]) -> None:
    sets: dict[str, dict[str, Any]] = {}
    apt: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    images: dict[str, dict[str, Any]] = {}
    for host in hosts:
        target, plan = host.target, host.plan
        record: dict[str, Any] = {"os": target.os, "arch": target.arch, "python": target.python,
                                  "target_from": target.source, "platform": plan.platform,
                                  "wheel_sets": [], "apt": "", "models": [], "images": []}
        for inst in plan.instances:
            if inst.deploy == "native" and inst.engine_package:
                key = pipwheels.key_for_target(inst.server, inst.engine_version, inst.backend,
                                               target)
                name = pipwheels.set_name(key, inst.engine_package, target, inst.backend)
                entry = sets.setdefault(name, {"requirement": inst.engine_package, "key": key,
                                               "target": target, "hosts": []})
                entry["hosts"].append(host.spec.name)
                record["wheel_sets"].append(name)
            if inst.image:
                entry = images.setdefault(inst.image, {"hosts": [], "archive": ""})
                entry["hosts"].append(host.spec.name)
                entry["archive"] = entry["archive"] or inst.image_archive
                record["images"].append(inst.image)
            mkey = model_key(inst.model["raw"], inst.model_file)
            entry = models.setdefault(mkey, {"raw": inst.model["raw"], "file": inst.model_file,
                                             "sha256": inst.model_sha256, "hosts": [],
                                             "endpoint": host.spec.var("vllama_hf_endpoint"),
                                             "token_file": ""})
            entry["hosts"].append(host.spec.name)
            entry["token_file"] = (entry["token_file"]
                                   or host.spec.var("vllama_hf_token_file") or "")
            record["models"].append(mkey)
        if target.family != "macos":
            entry = apt.setdefault(target.apt_name, {"target": target, "hosts": [],
                                                     "containers": False})
            entry["hosts"].append(host.spec.name)
            containers = any(i.deploy == "container" for i in plan.instances)
            entry["containers"] = entry["containers"] or containers
            record["apt"] = target.apt_name
            record["apt_packages"] = aptrepo.role_packages(_family(target), containers)
        builder.manifest.hosts[host.spec.name] = record
    for name, entry in sorted(sets.items()):
        builder.wheels(name, entry["requirement"], entry["key"], entry["target"],
                       entry["hosts"])
    for _name, entry in sorted(apt.items()):
        builder.apt(entry["target"], aptrepo.role_packages(_family(entry["target"]),
                                                           entry["containers"]),
                    entry["hosts"])
    for _mkey, entry in sorted(models.items()):
        builder.model(entry["raw"], entry["file"], entry["sha256"], entry["hosts"],
                      entry["endpoint"], entry["token_file"])
    for image, entry in sorted(images.items()):
        builder.image(image, entry["hosts"], entry["archive"])
    for name, record in builder.manifest.hosts.items():
        missing = [n for n in builder.manifest.not_collected if name in n["hosts"].split(", ")]
        record["complete"] = not missing


def _family(target: Target) -> str:
    """The roles' OS family (their vars/<family>.yml) of a target."""
    return "Debian" if target.family == "apt" else "RedHat"


def write_report(result: BundleResult, json_out: str) -> None:
    result.report().write_json(json_out)
