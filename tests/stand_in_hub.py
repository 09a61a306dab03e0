"""A stand-in for the Hugging Face Hub on loopback (test code; the Hub cannot be reached here).

It answers the three endpoints the role's download module and ``bundle`` use, for the
repositories it is given, each at one commit:

* ``/api/models/<repo>/revision/<main or the commit>`` -> ``{"sha": commit}``
* ``/api/models/<repo>/tree/<commit>?recursive=true`` -> the file list, weights as LFS entries
  (size and sha256), other files with their git blob sha1, as the Hub lists them
* ``/<repo>/resolve/<commit>/<path>`` -> the file (streamed from disk for real models)

``tamper`` makes every weight download differ from the listed hash; ``token_required`` answers
401 without ``Authorization: Bearer <token>`` (``token``, default ``s3cret``). ``downloads``
lists the paths served.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES: dict[str, bytes] = {
    "config.json": b'{"architectures": ["Qwen2ForCausalLM"]}\n',
    "tokenizer.json": b'{"version": "1.0"}\n',
    "model.safetensors": bytes(range(256)) * 64,
    "README.md": b"# tiny\n",
}
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")


def _gitsha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _sha256(source: bytes | Path) -> str:
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StandInHub:
    """Repositories by name: (commit, {path: content bytes or a file on disk})."""

    def __init__(self, repos: dict[str, tuple[str, dict[str, bytes | Path]]]) -> None:
        self.repos = repos
        self.tamper = False
        self.token_required = False
        self.token = "s3cret"
        self.downloads: list[str] = []
        self._trees: dict[str, list[dict[str, Any]]] = {}

    def tree(self, repo: str) -> list[dict[str, Any]]:
        if repo not in self._trees:
            entries: list[dict[str, Any]] = []
            for path, source in sorted(self.repos[repo][1].items()):
                size = len(source) if isinstance(source, bytes) else source.stat().st_size
                entry: dict[str, Any] = {"type": "file", "path": path, "size": size}
                if path.endswith(LFS_SUFFIXES):
                    entry["lfs"] = {"oid": _sha256(source), "size": size}
                    entry["oid"] = _gitsha1(b"pointer")
                else:
                    data = source if isinstance(source, bytes) else source.read_bytes()
                    entry["oid"] = _gitsha1(data)
                entries.append(entry)
            self._trees[repo] = [*entries, {"type": "directory", "path": "sub"}]
        return self._trees[repo]

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _file(self, path: str, source: bytes | Path) -> None:
                hub.downloads.append(path)
                tampered = hub.tamper and path.endswith(LFS_SUFFIXES)
                if isinstance(source, bytes):
                    self._send(200, source[:-1] + b"X" if tampered else source)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(source.stat().st_size))
                self.end_headers()
                with source.open("rb") as handle:
                    if tampered:
                        self.wfile.write(b"X")
                        handle.seek(1)
                    shutil.copyfileobj(handle, self.wfile, 1 << 20)

            def do_GET(self) -> None:
                if (hub.token_required
                        and self.headers.get("Authorization") != f"Bearer {hub.token}"):
                    self._send(401, b"{}")
                    return
                for repo, (commit, files) in hub.repos.items():
                    api = f"/api/models/{repo}"
                    if self.path in (f"{api}/revision/main", f"{api}/revision/{commit}"):
                        self._send(200, json.dumps({"sha": commit}).encode())
                        return
                    if self.path == f"{api}/tree/{commit}?recursive=true":
                        self._send(200, json.dumps(hub.tree(repo)).encode())
                        return
                    prefix = f"/{repo}/resolve/{commit}/"
                    if self.path.startswith(prefix):
                        path = urllib.parse.unquote(self.path[len(prefix):])
                        if path in files:
                            self._file(path, files[path])
                            return
                self._send(404, b"")

        return Handler


def serve(hub: StandInHub) -> Iterator[str]:
    """Run the stand-in Hub on 127.0.0.1 (an ephemeral port) and yield its endpoint."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), hub.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hub() -> Iterator[tuple[StandInHub, str]]:
    """org/tiny at COMMIT (FILES): a small repository for the download code's own tests."""
    state = StandInHub({"org/tiny": (COMMIT, dict(FILES))})
    for endpoint in serve(state):
        yield state, endpoint
