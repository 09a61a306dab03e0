"""The bundle manifest: every file of the bundle with its sha256 and size, plus what is in it.

``manifest.json`` is written canonically (sorted keys) and signed as bytes; nothing else in the
bundle is trusted unless the manifest lists it with a matching hash. Layout of a bundle folder::

    manifest.json  manifest.json.sig  signing-key.pub (a copy for reference, never trusted)
    wheels/<set>/*.whl + requirements.txt    engine wheels and dependencies, pinned with hashes
    apt/<os>-<arch>/*.deb Packages Release InRelease keyring.gpg    a signed flat repository
    models/<sha256>/<file>  models/<tree digest>/<folder>/...  models/hf/<slug>/<commit>/...
                                                                       model files and folders
    images/<name>.tar                                                  ``docker save`` archives
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vllama_provision.errors import BundleError

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
PUBLIC_KEY_COPY = "signing-key.pub"
CONTENT_DIRS = ("wheels", "apt", "models", "images")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_relpath(rel: str) -> str:
    """A manifest path: relative, POSIX, no '..', inside one of the content folders."""
    path = PurePosixPath(rel)
    if (path.is_absolute() or ".." in path.parts or not path.parts
            or path.parts[0] not in CONTENT_DIRS or "\\" in rel):
        raise BundleError(f"the manifest lists an unsafe path: {rel!r}")
    return str(path)


@dataclass
class Manifest:
    """What a bundle holds. ``files`` maps relative paths to {sha256, size}."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    wheel_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    apt: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    not_collected: list[dict[str, str]] = field(default_factory=list)
    created: str = ""
    tool_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "created": self.created, "tool_version": self.tool_version,
                "files": self.files, "wheel_sets": self.wheel_sets, "apt": self.apt,
                "models": self.models, "images": self.images, "hosts": self.hosts,
                "not_collected": self.not_collected}

    def dumps(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()

    @property
    def bundle_id(self) -> str:
        """A short id of the bundle's content (the files and their hashes)."""
        blob = json.dumps(self.files, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError(f"not a bundle manifest of format {FORMAT}")
        files = data.get("files")
        if not isinstance(files, dict):
            raise BundleError("the manifest has no file list")
        for rel, entry in files.items():
            safe_relpath(rel)
            if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                    and len(entry["sha256"]) == 64 and isinstance(entry.get("size"), int)):
                raise BundleError(f"the manifest entry of {rel} has no sha256 and size")
        return cls(files=files, wheel_sets=dict(data.get("wheel_sets") or {}),
                   apt=dict(data.get("apt") or {}), models=dict(data.get("models") or {}),
                   images=dict(data.get("images") or {}), hosts=dict(data.get("hosts") or {}),
                   not_collected=list(data.get("not_collected") or []),
                   created=str(data.get("created") or ""),
                   tool_version=str(data.get("tool_version") or ""))

    @classmethod
    def loads(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError(f"{MANIFEST} is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def read(bundle: Path) -> Manifest | None:
    """The manifest of a bundle folder, or None when there is none (not verified!)."""
    path = bundle / MANIFEST
    if not path.is_file():
        return None
    return Manifest.loads(path.read_bytes())


def check_file(bundle: Path, rel: str, entry: dict[str, Any]) -> str:
    """'' when ``bundle/rel`` matches its manifest entry, else what is wrong (naming the file)."""
    path = bundle / safe_relpath(rel)
    if not path.is_file():
        return f"bundle file {rel} is missing"
    size = path.stat().st_size
    if size != entry["size"]:
        return (f"bundle file {rel} does not match the manifest: {size} bytes, the manifest "
                f"says {entry['size']}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        return (f"bundle file {rel} does not match the manifest: sha256 {digest}, the manifest "
                f"says {entry['sha256']}")
    return ""


def verify_files(bundle: Path, manifest: Manifest, rels: list[str]) -> None:
    """Check the named files against the manifest; raise naming the first that differs."""
    for rel in rels:
        entry = manifest.files.get(rel)
        if entry is None:
            raise BundleError(f"bundle file {rel} is not in the manifest")
        problem = check_file(bundle, rel, entry)
        if problem:
            raise BundleError(problem)
