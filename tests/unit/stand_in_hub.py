"""A stand-in for the Hugging Face Hub on loopback (test code): the three endpoints the role's
download module and ``bundle`` use (revision, tree, resolve) for one small repository,
``org/tiny`` at ``COMMIT``. The Hub itself cannot be reached from the tests."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

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
            if self.path in ("/api/models/org/tiny/revision/main",
                             f"/api/models/org/tiny/revision/{COMMIT}"):
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
