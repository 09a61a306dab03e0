"""What each host gets: platform, engine, deploy mode, flags, units and model placement.

The planner is pure: inventory variables plus (optional) host facts in, a plan out. The CLI calls
it for ``plan`` and ``render``; the role calls it on the controller through the ``vllama_plan``
action plugin, so the files rendered on a host come from exactly the same plan.

Checks that need facts (GPU count, VRAM fit, driver CUDA version) say "not evaluated" when no
facts are available instead of guessing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vllama_provision import engines, gpu, modelmeta, models, zfs
from vllama_provision.inventory import HostSpec
from vllama_provision.modelref import ModelRef, parse_model
from vllama_provision.validation import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_PORTS,
    PLATFORMS,
    compatibility_refusal,
    resolve_deploy,
    resolve_engine,
    validate_host,
)

GIB = 1024**3

VLLM_GPU_DEFAULTS = {"max_num_batched_tokens": 16384, "max_num_seqs": 256, "max_model_len": 4096,
                     "gpu_memory_utilization": DEFAULT_GPU_MEMORY_UTILIZATION}
VLLM_CPU_DEFAULTS = {"max_num_batched_tokens": 2048, "max_num_seqs": 4, "max_model_len": 2048}
LLAMACPP_DEFAULTS = {"ctx_size": 4096}
# Embedding instances size nothing for generation: the context comes from the model (its own
# training length; 0 tells llama.cpp so) unless the inventory sets it, and vLLM's pooling
# runner gets no chat default for max_model_len or its batch (the model's length decides).
EMBED_UNSIZED = ("max_model_len", "max_num_batched_tokens")
EMBED_CPU_KVCACHE_GIB = 1


@dataclass
class Check:
    """One planning or preflight check. level: ok | warn | refuse | not-evaluated."""

    level: str
    what: str
    message: str
    instance: str = ""


@dataclass
class InstancePlan:
    name: str
    engine: str
    server: str
    deploy: str
    backend: str
    service_manager: str
    engine_version: str
    engine_package: str
    engine_key: str
    image: str
    model: dict[str, str]
    model_file: str
    model_sha256: str
    model_path: str
    served_name: str
    port: int
    bind_address: str
    endpoint: str
    local_endpoint: str
    options: dict[str, Any]
    argv: list[str]
    env: dict[str, str]
    secret_env_name: str
    readiness: dict[str, Any]
    paths: dict[str, str]
    files: list[dict[str, str]]
    api_key_file: str
    gpus: list[str] = field(default_factory=list)
    program: str = ""
    engine_remove: list[str] = field(default_factory=list)
    image_archive: str = ""
    release: str = ""
    checks: list[Check] = field(default_factory=list)
    task: str = "chat"  # chat | embed
    # Embedding instances: the vector length the model returns, read from the controller's
    # copy of the model (0: not known here; the host reads it from its copy when it verifies).
    embedding_dim: int = 0


@dataclass
class HostPlan:
    host: str
    platform: str | None
    platform_source: str
    facts: bool
    service_user: str
    install_root: str
    state_root: str
    models_root: str
    zfs_dataset: str
    zfs_properties: dict[str, str] = field(default_factory=dict)
    zfs_import_dirs: list[str] = field(default_factory=list)
    stop_timeout: int = 90
    verify_prompt: str = "What is the capital of France?"
    # macOS: where its commands are found (empty on a Mac: /bin/launchctl...; the tests' stand-in
    # host names a folder mirroring those paths) and the memory Metal may wire (0: macOS's own).
    macos_command_root: str = ""
    macos_wired_limit_mb: int = 0
    # pmset settings a serving Mac needs (no system or disk sleep, restart after power loss).
    macos_power: dict[str, int] = field(default_factory=dict)
    # Host-level files (not an instance's): a Mac's log rotation and wired-limit daemon.
    files: list[dict[str, str]] = field(default_factory=list)
    instances: list[InstancePlan] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return any(c.level == "refuse" for c in self.all_checks())

    def all_checks(self) -> list[Check]:
        return self.checks + [c for i in self.instances for c in i.checks]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["refused"] = self.refused
        return data


def platform_from_facts(facts: gpu.HostFacts) -> tuple[str | None, str]:
    """The platform the facts describe, with a reason when none fits."""
    system = facts["platform"]["system"]
    if system == "Darwin":
        if gpu.is_apple_silicon(facts):
            return "macos-arm64", ""
        return None, "macOS on Intel is not supported (no Metal GPU offload worth serving with)"
    if system != "Linux":
        return None, f"{system} hosts are not supported"
    nvidia = facts.get("nvidia") or {}
    if gpu.nvidia_gpus(facts) or (nvidia.get("pci_devices") or []):
        return "linux-nvidia", ""
    return "linux-cpu", ""


def _default_bind(host: HostSpec) -> str:
    try:
        ipaddress.ip_address(host.ansible_host)
    except ValueError:
        return "0.0.0.0"
    return host.ansible_host


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _fingerprint(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _model_path(ref: ModelRef, model_file: str, instance_root: str) -> str:
    """Where the engine finds the model: always through the release's ``model`` link, so the
    command line does not change when the content-addressed store path does."""
    base = f"{instance_root}/current/model"
    served = ref.served_file(model_file)
    if ref.kind == "path" and not model_file:
        return f"{base}/{PurePosixPath(ref.path).name}"
    if served:
        return f"{base}/{PurePosixPath(served).name}"
    return base


def _resolve_options(engine: str, backend: str, inst: dict[str, Any],
                     facts: gpu.HostFacts | None) -> dict[str, Any]:
    chosen = {k: v for k, v in inst.items() if v not in (None, 0, 0.0, "", [])}
    embed = inst.get("task") == "embed"
    if engine == "vllm":
        defaults = VLLM_GPU_DEFAULTS if backend == "cuda" else VLLM_CPU_DEFAULTS
        opts = {k: chosen.get(k, None if embed and k in EMBED_UNSIZED else v)
                for k, v in defaults.items()}
        if backend == "cuda":
            gpus = inst.get("gpus") or []
            opts["tensor_parallel_size"] = chosen.get("tensor_parallel_size") or max(1, len(gpus))
        else:
            opts["dtype"] = "bfloat16"
            opts["enforce_eager"] = True
            opts["cpu_kvcache_gib"] = chosen.get("cpu_kvcache_gib") or (
                EMBED_CPU_KVCACHE_GIB if embed else _cpu_kvcache_gib(facts))
        return opts
    opts = {"ctx_size": chosen.get("ctx_size", 0 if embed else LLAMACPP_DEFAULTS["ctx_size"])}
    n_gpu_layers = inst.get("n_gpu_layers", -1)
    opts["n_gpu_layers"] = 0 if backend == "cpu" else n_gpu_layers
    threads = chosen.get("threads")
    if not threads and backend == "cpu" and facts:
        threads = facts["platform"].get("cpu_count") or 0
    opts["threads"] = threads or 0
    return opts


def _cpu_kvcache_gib(facts: gpu.HostFacts | None) -> int:
    """vLLM's CPU KV cache: a quarter of the host's RAM, 1 to 32 GiB (1 without facts)."""
    if not facts:
        return 1
    memory = facts["platform"].get("memory_bytes") or 0
    return int(min(32, max(1, math.floor(memory / GIB / 4))))


@dataclass(frozen=True)
class EngineOverride:
    """``upgrade --engine E --version V`` (and ``plan`` with the same flags): every instance
    whose engine is E plans version V instead of its inventory's engine_version. Several
    versions (``--version V1 --version V2``) name one per server of a mixed fleet: each
    instance takes the first that is a version of its server (llama-cpp-python on Linux,
    xllamacpp on Macs), and one that has none is refused."""

    engine: str
    version: str
    versions: tuple[str, ...] = ()

    def for_server(self, server: str) -> str:
        """The version an instance of ``server`` plans."""
        for version in self.versions or (self.version,):
            if not engines.version_refusal(server, version):
                return version
        return self.version

    @classmethod
    def from_vars(cls, value: Any) -> EngineOverride | None:
        if isinstance(value, dict) and value.get("engine") and value.get("version"):
            versions = tuple(str(v) for v in value.get("versions") or [value["version"]])
            return cls(str(value["engine"]), str(value["version"]), versions)
        return None


def plan_host(host: HostSpec, facts: gpu.HostFacts | None = None,
              override: EngineOverride | None = None) -> HostPlan:
    """Plan one (already validated) host."""
    declared = host.var("vllama_platform")
    checks: list[Check] = []
    platform: str | None = declared if declared in PLATFORMS else None
    source = "inventory" if platform else "not evaluated: no facts"
    if facts is not None:
        detected, why = platform_from_facts(facts)
        if detected is None:
            checks.append(Check("refuse", "platform", why))
        elif platform and platform != detected:
            checks.append(Check("refuse", "platform",
                                f"the inventory says {platform} but the host's facts say "
                                f"{detected}"))
        elif not platform:
            platform, source = detected, "facts"
    plan = HostPlan(
        host=host.name, platform=platform, platform_source=source, facts=facts is not None,
        service_user=host.var("vllama_service_user"),
        install_root=host.var("vllama_install_root"), state_root=host.var("vllama_state_root"),
        models_root=_models_root(host, platform), zfs_dataset=host.var("vllama_zfs_dataset"),
        zfs_properties=zfs.normalize_properties(host.var("vllama_zfs_properties"))
        if host.var("vllama_zfs_dataset") else {},
        zfs_import_dirs=list(host.var("vllama_zfs_import_dirs") or [])
        if host.var("vllama_zfs_dataset") else [],
        stop_timeout=host.var("vllama_stop_timeout"),
        verify_prompt=host.var("vllama_verify_prompt"), checks=checks)
    if platform == "macos-arm64":
        plan.macos_command_root = str(host.var("vllama_macos_command_root") or "")
        plan.macos_wired_limit_mb = int(host.var("vllama_macos_wired_limit_mb") or 0)
        plan.macos_power = dict(MACOS_POWER)
        plan.files = _macos_host_files(plan.macos_wired_limit_mb)
    if facts is not None and platform is not None and declared not in PLATFORMS:
        # The platform came from facts: the static checks that depend on it (engine choices,
        # shared GPUs, default ports) run now, and their problems are refusals.
        for problem in validate_host(host.name, {**host.vars, "vllama_platform": platform},
                                     groups=host.groups):
            plan.checks.append(Check("refuse", problem.variable or "inventory",
                                     problem.render(), problem.instance))
    if platform == "macos-arm64" and facts is not None and facts.get("apple"):
        plan.checks += _macos_checks(facts["apple"])
    if facts is None and platform is not None:
        plan.checks.append(Check("not-evaluated", "facts",
                                 "not evaluated: no facts (GPU count, VRAM fit, driver/CUDA); run "
                                 "`vllama-provision facts INVENTORY --save`"))
    if platform is None:
        if facts is None:
            plan.checks.append(Check("not-evaluated", "platform",
                                     "not evaluated: no facts (set vllama_platform or run "
                                     "`vllama-provision facts INVENTORY --save`)"))
        return plan
    for inst in host.instances:
        plan.instances.append(_plan_instance(host, plan, platform, inst, facts, override))
    return plan


MIN_MACOS = (13, 0)  # xllamacpp's macOS wheels: macosx_13_0_arm64
MIN_ENGINE_PYTHON = "3.10"


def _macos_checks(apple: gpu.AppleFacts) -> list[Check]:
    """What a Mac's facts allow: a supported macOS, a Python for the engine's venv, and whether
    it comes back by itself after a power loss."""
    if "macos_version" not in apple:
        return [Check("not-evaluated", "macos", "not evaluated: these facts predate the macOS "
                      "details (version, Python, FileVault); run `vllama-provision facts "
                      "INVENTORY --save` again")]
    checks = []
    version = _version_tuple(apple["macos_version"])
    if version < MIN_MACOS:
        checks.append(Check("refuse", "macos", f"macOS {apple['macos_version']} is too old: "
                            f"the engine needs macOS {'.'.join(map(str, MIN_MACOS))} or later"))
    python = apple.get("engine_python")
    if python is None:
        stub = ("" if apple.get("command_line_tools") else
                "/usr/bin/python3 is only an installer stub until the Command Line Tools are "
                "installed (`xcode-select --install`), and ")
        checks.append(Check("refuse", "python", f"no Python {MIN_ENGINE_PYTHON}+ for the "
                            f"engine's venv: {stub}the Command Line Tools' Python is 3.9; "
                            "install python.org's Python 3.12 or Homebrew's python@3.12"))
    if apple.get("filevault"):
        checks.append(Check("warn", "filevault", "FileVault is on: after a power loss the Mac "
                            "waits at the unlock screen and no engine starts until someone "
                            "unlocks it (planned restarts: `fdesetup authrestart`)"))
    budget = apple.get("metal_budget_bytes")
    if budget:
        basis = ("iogpu.wired_limit_mb" if apple.get("metal_budget_basis") == "wired_limit"
                 else "an estimate of macOS's default share")
        cores = f", {apple['gpu_cores']} GPU cores" if apple.get("gpu_cores") else ""
        checks.append(Check("ok", "metal", f"{apple['chip']}{cores}"
                            f": Metal may wire {budget / 1024 ** 3:.1f} GiB of "
                            f"{apple['unified_memory_bytes'] / 1024 ** 3:.0f} GiB ({basis})"))
    return checks


def _metal_checks(name: str, ref: ModelRef, model_file: str, ctx_size: int,
                  facts: gpu.HostFacts) -> list[Check]:
    budget = (facts.get("apple") or {}).get("metal_budget_bytes")
    if not budget:
        return []
    local = Path(ref.path) / model_file if ref.kind == "path" and model_file else (
        Path(ref.path) if ref.kind == "path" else None)
    if local is None or not local.is_file():
        return [Check("not-evaluated", "metal", "Metal fit not evaluated: the controller does "
                      "not hold the model file to read its shape", name)]
    try:
        fit = modelmeta.metal_fit(local, ctx_size, budget)
    except modelmeta.ModelMetaError as exc:
        return [Check("not-evaluated", "metal", f"Metal fit NOT EVALUATED: {exc}", name)]
    return [Check("ok" if fit.fits else "refuse", "metal", fit.message, name)]


# The models root of a Mac whose inventory names none: the Linux default (/tank/...) cannot be
# made on macOS's read-only system volume; /Users/Shared is every account's and not FileVault's
# per-user home.
MACOS_MODELS_ROOT = "/Users/Shared/vllama/models"


# Where models live when the inventory names no vllama_models_root (Linux hosts).
LINUX_MODELS_ROOT = "/tank/ai/models"


def _models_root(host: HostSpec, platform: str | None) -> str:
    """The host's models root: its vllama_models_root, else the platform's default."""
    root = str(host.var("vllama_models_root") or "")
    if root:
        return root
    return MACOS_MODELS_ROOT if platform == "macos-arm64" else LINUX_MODELS_ROOT


def _plan_instance(host: HostSpec, plan: HostPlan, platform: str, inst: dict[str, Any],
                   facts: gpu.HostFacts | None,
                   override: EngineOverride | None = None) -> InstancePlan:
    name = inst["name"]
    engine = resolve_engine(inst["engine"], platform) or "llamacpp"
    deploy = resolve_deploy(inst["deploy"], platform) or "native"
    backend = engines.backend_for(platform)
    server = engines.server_for(engine, deploy, platform)
    service_manager = "launchd" if platform == "macos-arm64" else "systemd"
    checks: list[Check] = []
    refusal = compatibility_refusal(engine, deploy, platform)
    if refusal:
        checks.append(Check("refuse", "engine", refusal, name))

    version = inst["engine_version"] or engines.default_version(server, backend)
    if override is not None and override.engine == engine:
        version = override.for_server(server)
    package = engines.package_for(server, backend, version) if deploy == "native" else ""
    wrong = engines.version_refusal(server, version) if deploy == "native" else ""
    if wrong:
        # An upgrade across a mixed fleet names one version: Linux hosts run llama-cpp-python,
        # Macs xllamacpp; a version that is not one of this server's is refused, not tried.
        upgrading = override is not None and override.engine == engine
        advice = ("name one of its versions too (upgrade --version V1 --version V2: each host "
                  "takes its server's)" if upgrading else "set one of its versions")
        where = "upgrade --version" if upgrading else "engine_version"
        checks.append(Check("refuse", "engine", f"{where}: {wrong}; {advice}", name))
    default_machine = "arm64" if platform == "macos-arm64" else "x86_64"
    machine = facts["platform"]["machine"] if facts else default_machine
    engine_key = f"{engine}-{version}-{backend}-{machine}"
    image = _image(engine, backend, version, inst, deploy)

    ref = parse_model(inst["model"])
    install_root = plan.install_root
    instance_root = f"{install_root}/instances/{name}"
    model_path = _model_path(ref, inst["model_file"], instance_root)
    served = inst["served_name"] or name
    port = inst["port"] or DEFAULT_PORTS[engine]
    bind = inst["bind_address"] or _default_bind(host)
    local_host = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    connect_host = host.ansible_host if bind in ("0.0.0.0", "::") else bind
    options = _resolve_options(engine, backend, inst, facts)
    gpus = [str(g) for g in inst.get("gpus") or []]
    # Engine caches (compiled kernels, HF metadata) can grow to gigabytes: on the model volume.
    cache_dir = f"{plan.models_root}/.cache/{name}"
    container_model_root = "/models"

    paths = {
        "instance_root": instance_root,
        "releases": f"{instance_root}/releases",
        "current": f"{instance_root}/current",
        "cache": cache_dir,
        "secret_env": f"{plan.state_root}/secrets/{name}.env",
        "key_file": f"{plan.state_root}/secrets/{name}.key",
        "engine_venv": f"{install_root}/engines/{engine_key}",
        "unit": f"/etc/systemd/system/vllama-{name}.service",
        # launchd's service target on a Mac (what launchctl print/kickstart/bootout take).
        "unit_name": f"system/org.vllama.{name}" if service_manager == "launchd"
        else f"vllama-{name}.service",
        "plist": f"/Library/LaunchDaemons/org.vllama.{name}.plist",
        "launchd_label": f"org.vllama.{name}",
        "log_dir": f"/Library/Logs/vllama/{name}",
    }
    settings = engines.EngineSettings(
        model_path=model_path if deploy == "native" else
        model_path.replace(f"{instance_root}/current/model", container_model_root),
        served_name=served, bind_address=bind, port=port, backend=backend, options=options,
        extra_args=list(inst.get("extra_args") or []),
        cache_dir=cache_dir if deploy == "native" else "/cache",
        # Inside a container the reserved GPUs are renumbered from 0: select them with the
        # container's device reservation, not CUDA_VISIBLE_DEVICES.
        gpus=gpus if deploy == "native" else [], task=inst["task"])
    key_arg = engines.CONTAINER_KEY_PATH if deploy == "container" else paths["key_file"]
    argv = engines.engine_argv(server, settings, key_arg)
    env = engines.engine_env(server, settings)
    readiness = engines.readiness_for(server).to_dict()

    files = _files(service_manager, deploy, paths)
    # An unpinned model on this controller is part of the release by its content: replacing the
    # file or folder makes a new release (the old one keeps serving the old content and stays
    # there for a rollback) instead of changing what an existing release points at.
    content = "" if inst["model_sha256"] else models.controller_content(ref, inst["model_file"])
    fingerprint = _fingerprint({"engine_key": engine_key, "image": image, "model": ref.raw,
                                "model_file": inst["model_file"],
                                "model_sha256": inst["model_sha256"], "argv": argv, "env": env,
                                "deploy": deploy, **({"content": content} if content else {}),
                                # A release on a ZFS store links to a dataset: a new store is a
                                # new release (plain-folder release ids are unchanged).
                                **({"zfs_dataset": plan.zfs_dataset} if plan.zfs_dataset else {})})
    if facts is not None and engine == "vllm" and backend == "cuda" and inst["task"] == "embed":
        checks.append(Check("not-evaluated", "vram", "VRAM fit not evaluated for an embedding "
                            "instance (no KV cache to size; vLLM checks the weights itself)",
                            name))
    elif facts is not None and engine == "vllm" and backend == "cuda":
        checks += _vram_checks(name, ref, options, gpus, facts)
        checks += _cuda_checks(name, deploy, version, facts)
    if facts is not None and backend == "metal" and inst["task"] == "chat":
        checks += _metal_checks(name, ref, inst["model_file"], int(options.get("ctx_size") or 0),
                                facts)
    if image and "@sha256:" not in image:
        checks.append(Check("warn", "image", f"{image} is pinned by tag only; set image: "
                            "REPO@sha256:DIGEST to pin it by digest", name))
    if plan.zfs_dataset and ref.kind == "hf" and not ref.revision and not inst["model_sha256"]:
        checks.append(Check("warn", "model", f"{ref.raw} is not pinned: its ZFS dataset "
                            "(<slug>--main) is sealed once staged and will not follow the "
                            "branch; pin it as ORG/NAME@REVISION (or set model_sha256)", name))
    return InstancePlan(
        name=name, engine=engine, server=server, deploy=deploy, backend=backend,
        service_manager=service_manager, engine_version=version, engine_package=package,
        engine_key=engine_key, image=image, model=ref.to_dict(), model_file=inst["model_file"],
        model_sha256=inst["model_sha256"], model_path=settings.model_path, served_name=served,
        port=port, bind_address=bind,
        endpoint=f"http://{_url_host(connect_host)}:{port}",
        local_endpoint=f"http://{_url_host(local_host)}:{port}",
        options=options, argv=argv, env=env,
        secret_env_name=engines.SECRET_ENV[server], readiness=readiness, paths=paths,
        files=files, api_key_file=inst["api_key_file"], gpus=gpus,
        program=engines.program_for(server, deploy, paths["engine_venv"]),
        engine_remove=engines.remove_after_install(server, backend) if deploy == "native" else [],
        image_archive=(inst.get("image_archive") or "") if deploy == "container" else "",
        release=fingerprint, checks=checks, task=inst["task"],
        embedding_dim=_embedding_dim(ref, inst["model_file"]) if inst["task"] == "embed" else 0)


def _embedding_dim(ref: ModelRef, model_file: str) -> int:
    """The vector length of a model this controller holds (0 when it holds none)."""
    if ref.kind != "path":
        return 0
    local = Path(ref.path) / model_file if model_file else Path(ref.path)
    return modelmeta.embedding_dimension(local) if local.exists() else 0


def _image(engine: str, backend: str, version: str, inst: dict[str, Any], deploy: str) -> str:
    if deploy != "container":
        return ""
    if inst.get("image"):
        return str(inst["image"])
    key = "vllm" if engine == "vllm" else f"llamacpp-{'cuda' if backend == 'cuda' else 'cpu'}"
    spec = engines.IMAGES[key]
    ref = f"{spec['repository']}:{spec['tag'].format(version=version)}"
    return f"{ref}@{spec['digest']}" if spec["digest"] else ref


def _files(service_manager: str, deploy: str, paths: dict[str, str]) -> list[dict[str, str]]:
    """The templates an instance renders, and where each lands on the host.

    ``{release}`` in a destination is the release folder the file belongs to; files outside a
    release (units, plists) are static and read the release through the ``current`` link: a
    unit its ``engine.env``, a plist its ``engine.json`` (command line and environment).
    """
    release = f"{paths['releases']}/{{release}}"
    if service_manager == "launchd":
        return [{"template": "launchd/vllama-engine.json.j2", "dest": f"{release}/engine.json",
                 "mode": "0644", "validator": "json"},
                {"template": "launchd/vllama-engine.plist.j2", "dest": paths["plist"],
                 "mode": "0644", "validator": "plist"}]
    if deploy == "container":
        return [{"template": "compose/vllama-engine.compose.yml.j2",
                 "dest": f"{release}/compose.yml", "mode": "0644", "validator": "compose"},
                {"template": "systemd/vllama-compose.service.j2", "dest": paths["unit"],
                 "mode": "0644", "validator": "systemd"}]
    return [{"template": "systemd/vllama-engine.env.j2", "dest": f"{release}/engine.env",
             "mode": "0644", "validator": "env"},
            {"template": "systemd/vllama-engine.service.j2", "dest": paths["unit"],
             "mode": "0644", "validator": "systemd"}]


# What `pmset -a` sets on a serving Mac: no system sleep (the display may sleep), no disk
# sleep, and a restart after a power loss.
MACOS_POWER = {"sleep": 0, "disksleep": 0, "autorestart": 1}

# launchd's label of the daemon that sets the wired limit at every boot (sysctl values do not
# survive a restart).
WIRED_LIMIT_LABEL = "org.vllama.wired-limit"


def _macos_host_files(wired_limit_mb: int) -> list[dict[str, str]]:
    """A Mac's host-level files: the engines' log rotation (newsyslog) and, with
    vllama_macos_wired_limit_mb, the LaunchDaemon that sets iogpu.wired_limit_mb at boot."""
    files = [{"template": "launchd/vllama-newsyslog.conf.j2",
              "dest": "/etc/newsyslog.d/vllama.conf", "mode": "0644",
              "validator": "newsyslog"}]
    if wired_limit_mb:
        files.append({"template": "launchd/vllama-wired-limit.plist.j2",
                      "dest": f"/Library/LaunchDaemons/{WIRED_LIMIT_LABEL}.plist",
                      "mode": "0644", "validator": "plist"})
    return files


def _selected_gpus(facts: gpu.HostFacts, gpus: list[str]) -> tuple[list[dict], list[str]]:
    found: list[dict] = []
    missing: list[str] = []
    for sel in gpus:
        item = gpu.find_gpu(facts, int(sel) if sel.isdigit() else sel)
        (found.append(dict(item)) if item else missing.append(sel))
    return found, missing


def _vram_checks(name: str, ref: ModelRef, options: dict[str, Any],
                 gpus: list[str], facts: gpu.HostFacts) -> list[Check]:
    checks: list[Check] = []
    available = [dict(g) for g in gpu.nvidia_gpus(facts)]
    if not available:
        return [Check("not-evaluated", "vram", "not evaluated: the host reports no usable "
                      "NVIDIA GPU yet (driver not loaded?)", name)]
    selected, missing = _selected_gpus(facts, gpus) if gpus else (available, [])
    if missing:
        checks.append(Check("refuse", "gpus", f"GPU(s) {', '.join(missing)} not found; the host "
                            f"has {', '.join(str(g['index']) for g in available)}", name))
        return checks
    tp = options["tensor_parallel_size"]
    if tp > len(selected):
        checks.append(Check("refuse", "gpus", f"tensor_parallel_size {tp} needs {tp} GPUs; "
                            f"{len(selected)} available to this instance", name))
        return checks
    local_dir = Path(ref.path) if ref.kind == "path" and Path(ref.path).is_dir() else None
    try:
        meta = modelmeta.lookup_meta(ref.raw if ref.kind != "hf" else ref.repo, local_dir)
    except modelmeta.ModelMetaError as exc:
        return [Check("not-evaluated", "vram", f"VRAM fit NOT EVALUATED: {exc}", name)]
    if meta is None:
        checks.append(Check("not-evaluated", "vram",
                            f"VRAM fit NOT EVALUATED: no metadata for {ref.raw} (no local "
                            "config.json and not in the recorded table)", name))
        return checks
    for card in selected[:tp]:
        fit = modelmeta.vram_fit(
            meta, gpu_memory_bytes=card["memory_total_bytes"],
            gpu_memory_utilization=options["gpu_memory_utilization"], tensor_parallel_size=tp,
            max_model_len=options["max_model_len"],
            max_num_batched_tokens=options["max_num_batched_tokens"],
            max_num_seqs=options["max_num_seqs"])
        where = f"GPU {card['index']} ({card['name']})"
        if not fit.fits:
            checks.append(Check("refuse", "vram", f"{where}: {fit.message}", name))
        else:
            checks.append(Check("ok", "vram", f"{where}: {fit.message}", name))
            checks += [Check("warn", "vram", f"{where}: {w}", name) for w in fit.warnings]
    return checks


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def _cuda_checks(name: str, deploy: str, version: str, facts: gpu.HostFacts) -> list[Check]:
    if deploy != "container":
        return []
    needed = engines.VLLM_IMAGE_CUDA.get(".".join(version.split(".")[:2]),
                                         engines.VLLM_IMAGE_CUDA["default"])
    have = (facts.get("nvidia") or {}).get("cuda_version")
    if not have:
        return [Check("not-evaluated", "cuda", "driver CUDA version unknown (no driver yet); "
                      f"the image needs CUDA >= {needed}", name)]
    if _version_tuple(have) < _version_tuple(needed):
        return [Check("refuse", "cuda", f"the vLLM {version} image needs CUDA >= {needed}; the "
                      f"driver supports CUDA {have}: upgrade the driver branch", name)]
    return [Check("ok", "cuda", f"driver supports CUDA {have} >= {needed}", name)]
