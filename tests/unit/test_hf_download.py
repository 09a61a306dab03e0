"""The Hugging Face download code, run for real against a stand-in Hub on loopback.

The Hub itself cannot be reached from here, so a tiny HTTP server on 127.0.0.1 answers the same
three endpoints the module uses (revision, tree, resolve) for a small repository. Everything
else (listing, selection, hashing, temporary names, renames, error paths) is the module's own
code, exactly as it runs on a host.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from stand_in_hub import COMMIT, FILES

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "vllama_hf_download", ROOT / "plugins/modules/vllama_hf_download.py")
hf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hf)


def test_downloads_what_an_engine_needs_and_checks_every_hash(hub: Any, tmp_path: Path) -> None:
    _, endpoint = hub
    changed, commit, files = hf.download(endpoint, "org/tiny", "main", str(tmp_path), [], "", "")
    assert changed and commit == COMMIT
    assert sorted(f["path"] for f in files) == ["config.json", "model.safetensors",
                                                "tokenizer.json"]
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / name).read_bytes() == FILES[name]
    assert not (tmp_path / "README.md").exists()
    assert not list(tmp_path.glob(".partial-*"))


def test_a_second_download_keeps_matching_files(hub: Any, tmp_path: Path) -> None:
    state, endpoint = hub
    hf.download(endpoint, "org/tiny", "main", str(tmp_path), [], "", "")
    state.downloads.clear()
    changed, _, _ = hf.download(endpoint, "org/tiny", "main", str(tmp_path), [], "", "")
    assert not changed and state.downloads == []


def test_a_corrupted_download_is_refused_and_removed(hub: Any, tmp_path: Path) -> None:
    state, endpoint = hub
    state.tamper = True
    with pytest.raises(hf.DownloadError, match="does not match"):
        hf.download(endpoint, "org/tiny", "main", str(tmp_path), [], "", "")
    assert not (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob(".partial-*"))


def test_a_pinned_sha256_must_match_the_hub(hub: Any, tmp_path: Path) -> None:
    _, endpoint = hub
    with pytest.raises(hf.DownloadError, match="pins"):
        hf.download(endpoint, "org/tiny", "main", str(tmp_path), ["model.safetensors"],
                    "0" * 64, "")
    good = hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    changed, _, files = hf.download(endpoint, "org/tiny", "main", str(tmp_path),
                                    ["model.safetensors"], good, "")
    assert changed and [f["path"] for f in files] == ["model.safetensors"]


def test_a_missing_file_and_a_gated_repo_say_what_is_wrong(hub: Any, tmp_path: Path) -> None:
    state, endpoint = hub
    with pytest.raises(hf.DownloadError, match=r"not in the repository: model\.gguf"):
        hf.download(endpoint, "org/tiny", "main", str(tmp_path), ["model.gguf"], "", "")
    state.token_required = True
    with pytest.raises(hf.DownloadError, match="gated or private"):
        hf.download(endpoint, "org/tiny", "main", str(tmp_path), [], "", "")
    changed, _, _ = hf.download(endpoint, "org/tiny", "main", str(tmp_path), [], "", "s3cret")
    assert changed
