"""Verification from the controller (verify.verify_all, cli_common.controller_checks and the
`verify` command) against stand-in endpoints on loopback: the real httpx client, the
controller's key copies, the host's own prompt, several instances at once.

The stand-in is a small HTTP server speaking the OpenAI routes verification uses (a streamed
completion included); the engines themselves are verified from the controller in the e2e tier.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from vllama_provision import cli_common, verify
from vllama_provision.report import Report

KEY = "sk-test-controller-copy"


class _Endpoint(BaseHTTPRequestHandler):
    prompts: ClassVar[list[str]] = []
    served = "smollm2"

    def log_message(self, *_args: Any) -> None:
        return None

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self._reply(401, {"error": {"message": "bad key"}})
            return False
        return True

    def do_GET(self) -> None:
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        elif self._authorised():
            self._reply(200, {"data": [{"id": self.served}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self._authorised():
            return
        self.prompts.append(body["messages"][0]["content"])
        assert body["stream"] is True and body["max_tokens"] == verify.MAX_TOKENS
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in (" Rome", ". "):
            chunk = {"choices": [{"delta": {"content": piece}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("VLLAMA_STATE_DIR", str(tmp_path / "state"))
    key = tmp_path / "state" / "keys" / "h1" / "smollm2.key"
    key.parent.mkdir(parents=True)
    key.write_text(KEY + "\n")
    _Endpoint.prompts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _plans(url: str, prompt: str | None) -> dict[str, dict[str, Any]]:
    plan: dict[str, Any] = {"instances": [{"name": "smollm2", "endpoint": url,
                                           "served_name": "smollm2"}]}
    if prompt is not None:
        plan["verify_prompt"] = prompt
    return {"h1": plan}


def _host_verified() -> Report:
    report = Report("apply")
    item = report.host("h1").instance("smollm2")
    item.verified, item.verified_from = True, ["host"]
    return report


def test_the_controller_asks_the_hosts_prompt(endpoint: str) -> None:
    report = _host_verified()
    cli_common.controller_checks(report, _plans(endpoint, "What is the capital of Italy?"))
    item = report.host("h1").instance("smollm2")
    assert _Endpoint.prompts == ["What is the capital of Italy?"]
    assert item.verified_from == ["controller", "host"]
    assert item.extra["controller_answer"] == "Rome."


def test_a_wrong_key_copy_is_not_verified_from_the_controller(endpoint: str, tmp_path: Path,
                                                               capsys) -> None:
    (tmp_path / "state" / "keys" / "h1" / "smollm2.key").write_text("sk-stale\n")
    report = _host_verified()
    cli_common.controller_checks(report, _plans(endpoint, None))
    item = report.host("h1").instance("smollm2")
    assert item.verified_from == ["host"] and "controller_answer" not in item.extra
    assert "not verified from the controller: /v1/models answered 401" in capsys.readouterr().err
    assert _Endpoint.prompts == []


def test_many_instances_are_checked_at_once_and_each_fails_for_its_own_reason(
        endpoint: str, tmp_path: Path) -> None:
    keys = tmp_path / "state" / "keys"
    for host, name in (("h2", "a"), ("h3", "c"), ("h1", "smollm2-listed")):
        (keys / host).mkdir(exist_ok=True)
        (keys / host / f"{name}.key").write_text(KEY + "\n")
    plain = {"endpoint": endpoint, "served_name": "smollm2"}
    targets = [
        ("h1", {"name": "smollm2", **plain}, "q1"),
        ("h2", {"name": "a", **plain, "served_name": "other"}, "q2"),   # wrong model name
        ("h2", {"name": "b", **plain}, "q3"),                           # no key copy
        ("h3", {"name": "c", **plain, "endpoint": "http://127.0.0.1:9"}, "q4"),  # refused
        ("h1", {"name": "smollm2-listed", **plain,                       # readiness = model list
                "readiness": {"path": "/v1/models", "auth": True}}, "q5"),
    ]
    checks = verify.verify_all(targets, ready_timeout=1)
    assert checks[("h1", "smollm2")].verified and checks[("h1", "smollm2")].answer == "Rome."
    assert checks[("h1", "smollm2-listed")].verified
    wrong = checks[("h2", "a")]
    assert (wrong.reachable, wrong.verified) == (True, False)
    assert wrong.detail == "/v1/models lists ['smollm2'], expected exactly ['other']"
    assert checks[("h2", "b")].detail == "no controller copy of the API key"
    refused = checks[("h3", "c")]
    assert (refused.reachable, refused.verified) == (False, False)
    assert refused.detail.startswith("not reachable from the controller")
    assert sorted(_Endpoint.prompts) == ["q1", "q5"]


def test_the_host_side_module_streams_the_same_completion(endpoint: str, tmp_path: Path) -> None:
    """One contract: the role's vllama_verify module asks, on the host, the one streamed
    completion of MAX_TOKENS tokens the controller asks (the stand-in checks the length)."""
    path = Path(__file__).resolve().parents[2] / "plugins/modules/vllama_verify.py"
    spec = importlib.util.spec_from_file_location("vllama_verify_module", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    default = yaml.safe_load(module.DOCUMENTATION)["options"]["max_tokens"]["default"]
    assert default == verify.MAX_TOKENS
    key_file = tmp_path / "host.key"
    key_file.write_text(KEY + "\n")
    inst = {"name": "smollm2", "local_endpoint": endpoint, "served_name": "smollm2",
            "readiness": {"path": "/health", "auth": False},
            "paths": {"key_file": str(key_file)}}
    out = module.verify_one(inst, "What is the capital of Italy?", 5, default)
    assert out["error"] is None and out["verified"] is True
    assert out["answer"] == "Rome." and out["ttft_ms"] is not None
    assert _Endpoint.prompts == ["What is the capital of Italy?"]  # one completion, not two
