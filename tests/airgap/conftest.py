"""Fixtures of the air-gapped tier: the end-to-end tier's CLI runner and engine wheel, and the
test bundles' signing key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from e2e.conftest import engine_wheel, run_cli  # noqa: F401 - fixtures re-exported

from vllama_provision import paths


@pytest.fixture(scope="module")
def bundle_key() -> Path:
    """A signing key kept with the test bundles in the cache (not the controller's own key)."""
    folder = paths.cache_dir() / "test-bundles"
    folder.mkdir(parents=True, exist_ok=True)
    private = folder / "test-signing-key"
    if not private.is_file():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vllama-test",
                        "-f", str(private)], check=True)
    return private
