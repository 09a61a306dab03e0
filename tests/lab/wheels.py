"""A second engine build for rollout tests: the real llama-cpp-python wheel RELABELLED.

Two different engine builds must be available offline, and a second real compile takes about
25 minutes. So the second build is the SAME compiled wheel relabelled with a PEP 440 local
version (``0.3.36+vllamatest1``): its METADATA, dist-info folder and RECORD are rewritten,
nothing else. To the tool it is another engine version with its own wheelhouse key, venv and
release, which is what an upgrade exercises.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path

from vllama_provision import wheelhouse

OLD = "0.3.36"
NEW = "0.3.36+vllamatest1"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def relabel_wheel(source: Path, version: str, out_dir: Path) -> Path:
    """Copy a wheel under another version: dist-info renamed, METADATA and RECORD rewritten."""
    dist, old_version, rest = source.name.split("-", 2)
    old_info, new_info = f"{dist}-{old_version}.dist-info", f"{dist}-{version}.dist-info"
    target = out_dir / f"{dist}-{version}-{rest}"
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(source) as zin:
        for name in zin.namelist():
            data = zin.read(name)
            new_name = name.replace(old_info + "/", new_info + "/", 1)
            if new_name == f"{new_info}/METADATA":
                data = b"\n".join(
                    f"Version: {version}".encode() if line.startswith(b"Version: ") else line
                    for line in data.split(b"\n"))
            files[new_name] = data
    record_name = f"{new_info}/RECORD"
    record = io.StringIO()
    for name, data in files.items():
        if name != record_name:
            record.write(f"{name},{_record_hash(data)},{len(data)}\n")
    record.write(f"{record_name},,\n")
    files[record_name] = record.getvalue().encode()
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zout:
        for name, data in files.items():
            zout.writestr(name, data)
    tmp.rename(target)
    return target


def ensure_relabelled(source: Path, version: str = NEW) -> Path:
    """The wheelhouse key of the relabelled build, made once from the real wheel ``source``."""
    key = dataclasses.replace(wheelhouse.local_key(), version=version)
    found = wheelhouse.wheels(key)
    if found:
        return found[0]
    folder = wheelhouse.folder(key)
    folder.mkdir(parents=True, exist_ok=True)
    wheel = relabel_wheel(source, version, folder)
    (folder / wheelhouse.MARKER).write_text(key.name + "\n")
    return wheel
