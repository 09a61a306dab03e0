"""The Hugging Face download code, run for real against a stand-in Hub on loopback.

The Hub itself cannot be reached from here, so a tiny HTTP server on 127.0.0.1 answers the same
three endpoints the module uses (revision, tree, resolve) for a small repository. Everything
else (listing, selection, hashing, temporary names, renames, error paths) is the module's own
code, exactly as it runs on a host.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "vllama_hf_download", ROOT / "roles/vllama/library/vllama_hf_download.py")
hf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hf)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {
    "config.json": b'{"architectures": ["Qwen2ForCausalLM"]}\n',
    "tokenizer.json": b'{"version": "1.0"}\n',
    "model.safetensors": bytes(range(256)) * 64,
    "README.md": b"# tiny\n",
}
LFS = {"model.safetensors"}


def _gitsha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


class StandInHub:
    """Serves org/tiny at COMMIT; `tamper` makes the weights' download differ from the tree."""

    def __init__(self) -> None:
        self.tamper = False
        self.token_required = False
        self.downloads: list[str] = []

    def tree(self) -> list[dict[str, Any]]:
        entries = []
        for path, data in FILES.items():
            entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data)}
            if path in LFS:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}
                entry["oid"] = _gitsha1(b"pointer")
            else:
                entry["oid"] = _gitsha1(data)
            entries.append(entry)
        return [*entries, {"type": "directory", "path": "sub"}]


@pytest.fixture
def hub() -> Iterator[tuple[StandInHub, str]]:
    state = StandInHub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def _send(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if state.token_required and self.headers.get("Authorization") != "Bearer s3cret":
                self._send(401, b"{}")
                return
            if self.path == "/api/models/org/tiny/revision/main":
                self._send(200, json.dumps({"sha": COMMIT}).encode())
            elif self.path == f"/api/models/org/tiny/tree/{COMMIT}?recursive=true":
                self._send(200, json.dumps(state.tree()).encode())
            elif self.path.startswith(f"/org/tiny/resolve/{COMMIT}/"):
                name = self.path.rsplit("/", 1)[1]
                data = FILES.get(name)
                if data is None:
                    self._send(404, b"")
                    return
                state.downloads.append(name)
                self._send(200, data[:-1] + b"X" if state.tamper and name in LFS else data)
            else:
                self._send(404, b"")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


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
