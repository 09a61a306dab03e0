"""The host facts shape: the ONE definition of what we know about a host's platform and GPUs.

The NVML fact module produces this shape on each host, ``facts --save`` caches it, and the
planner reads it. Every consumer goes through :func:`validate_host_facts` /
:func:`load_host_facts`, so a cache written by an older or broken producer is refused with a
precise message instead of surfacing later as a ``KeyError`` in the planner.

Shape (schema 1)::

    {
      "schema": 1,
      "platform": {"system", "machine", "kernel", "os_family", "distribution",
                   "distribution_version", "python", "memory_bytes", "cpu_count",
                   "secure_boot", "kernel_headers_installable"},
      "nvidia": {"nvml", "error", "driver_version", "cuda_version", "nvml_version",
                 "pci_devices": [{"bus_id", "vendor_id", "device_id", "name"}]},
      "gpus": [{"index", "uuid", "name", "memory_total_bytes", "driver_version",
                "cuda_version", "compute_capability", "mig_mode", "pci_bus_id",
                optional "mig_devices": [{"uuid", "memory_total_bytes", "profile"}]}],
      "apple": null | {"chip", "unified_memory_bytes", "metal", optional "macos_version",
                       "macos_build", "gpu_cores", "wired_limit_mb", "metal_budget_bytes",
                       "metal_budget_basis", "filevault", "command_line_tools",
                       "engine_python": null | {"path", "version"}}
    }

``nvidia.nvml`` says how far NVML got, because each failure needs a different remedy:

* ``ok``: NVML initialised; ``gpus`` lists what it enumerated.
* ``library_not_found``: ``libnvidia-ml.so.1`` could not be loaded (no driver installed).
  ``pci_devices`` still shows NVIDIA hardware found on the PCI bus, so the planner can say
  "install the driver" rather than "no GPU".
* ``driver_not_loaded``: the library is there but the kernel module is not loaded.
* ``mismatch``: "Driver/library version mismatch": the user-space library and the loaded kernel
  module differ, typically after a driver upgrade without a reboot.
* ``error``: any other NVML failure; ``error`` carries its text.
* ``absent``: no NVIDIA device on the PCI bus and no library: nothing NVIDIA on this host.

``gpus`` is always present (an empty list when there are none). Keys starting with ``_`` (such
as a fixture's ``"_source"``) are annotations and ignored; any other unknown key is reported,
because this module is the single definition and a producer that adds a field must add it here.

This module deliberately imports nothing from ``pynvml``: it describes and checks data, so it
works on the controller, where there is usually no GPU and no NVIDIA library.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, NotRequired, TypedDict, cast

from vllama_provision.errors import UsageError

SCHEMA_VERSION = 1

SYSTEMS = ("Linux", "Darwin")
MACHINES = ("x86_64", "aarch64", "arm64")
# The families the planner supports; facts from other families are still valid facts (the
# planner refuses them with a reason), so os_family is checked as a non-empty string only.
KNOWN_OS_FAMILIES = ("Debian", "RedHat", "Darwin")
NVML_STATES = ("ok", "library_not_found", "driver_not_loaded", "mismatch", "error", "absent")
NVML_FAILURES = ("library_not_found", "driver_not_loaded", "mismatch", "error")
MIG_MODES = ("disabled", "enabled", "unsupported")

GPU_UUID_RE = re.compile(
    r"^GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MIG_UUID_RE = re.compile(
    r"^MIG-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# NVML prints an 8-digit PCI domain ("00000000:01:00.0"), lspci and sysfs a 4-digit one.
PCI_BUS_ID_RE = re.compile(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
PCI_ID_RE = re.compile(r"^0x[0-9a-fA-F]{4}$")
DOTTED_VERSION_RE = re.compile(r"^\d+\.\d+$")

NVIDIA_PCI_VENDOR = "0x10de"


class PlatformFacts(TypedDict):
    system: Literal["Linux", "Darwin"]
    machine: Literal["x86_64", "aarch64", "arm64"]
    kernel: str
    os_family: str
    distribution: str
    distribution_version: str
    python: str
    memory_bytes: int
    cpu_count: int
    secure_boot: bool | None
    kernel_headers_installable: bool | None
    libc: NotRequired[str]


class PciDeviceFacts(TypedDict):
    bus_id: str
    vendor_id: str
    device_id: str
    name: str


class NvidiaFacts(TypedDict):
    nvml: Literal["ok", "library_not_found", "driver_not_loaded", "mismatch", "error", "absent"]
    error: str | None
    driver_version: str | None
    cuda_version: str | None
    nvml_version: str | None
    pci_devices: list[PciDeviceFacts]


class MigDeviceFacts(TypedDict):
    """One MIG instance of a GPU in MIG mode (optional in the shape)."""

    uuid: str
    memory_total_bytes: int
    profile: str


class GpuFacts(TypedDict):
    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    driver_version: str
    cuda_version: str
    compute_capability: str
    mig_mode: Literal["disabled", "enabled", "unsupported"]
    pci_bus_id: str
    mig_devices: NotRequired[list[MigDeviceFacts]]


class EnginePython(TypedDict):
    path: str
    version: str


class AppleFacts(TypedDict):
    chip: str
    unified_memory_bytes: int
    metal: bool
    # Gathered since the Mac path (older caches lack them: the planner then says "not
    # evaluated"; `facts --save` again fills them in).
    macos_version: NotRequired[str]
    macos_build: NotRequired[str]
    gpu_cores: NotRequired[int | None]
    wired_limit_mb: NotRequired[int]  # iogpu.wired_limit_mb; 0: macOS's default
    metal_budget_bytes: NotRequired[int]  # what Metal may wire: the fit check's "VRAM"
    metal_budget_basis: NotRequired[Literal["wired_limit", "default_share"]]
    filevault: NotRequired[bool | None]
    command_line_tools: NotRequired[bool]
    engine_python: NotRequired[EnginePython | None]


class HostFacts(TypedDict):
    schema: int
    platform: PlatformFacts
    nvidia: NvidiaFacts
    gpus: list[GpuFacts]
    apple: AppleFacts | None


_TOP_KEYS = ("schema", "platform", "nvidia", "gpus", "apple")
_PLATFORM_KEYS = ("system", "machine", "kernel", "os_family", "distribution",
                  "distribution_version", "python", "memory_bytes", "cpu_count", "secure_boot",
                  "kernel_headers_installable")
# libc: ("glibc", "2.36") as "glibc2.36"; part of the wheelhouse key of compiled engines.
_PLATFORM_OPTIONAL_KEYS = ("libc",)
_NVIDIA_KEYS = ("nvml", "error", "driver_version", "cuda_version", "nvml_version", "pci_devices")
_PCI_KEYS = ("bus_id", "vendor_id", "device_id", "name")
_GPU_KEYS = ("index", "uuid", "name", "memory_total_bytes", "driver_version", "cuda_version",
             "compute_capability", "mig_mode", "pci_bus_id")
_GPU_OPTIONAL_KEYS = ("mig_devices",)
_MIG_KEYS = ("uuid", "memory_total_bytes", "profile")
_APPLE_KEYS = ("chip", "unified_memory_bytes", "metal")
_APPLE_OPTIONAL_KEYS = ("macos_version", "macos_build", "gpu_cores", "wired_limit_mb",
                        "metal_budget_bytes", "metal_budget_basis", "filevault",
                        "command_line_tools", "engine_python")


# --- small checkers: each appends "<path>: <problem>" and returns whether the value was usable ---

def _is_int(value: object) -> bool:
    # bool is an int subclass; true/false where a number belongs is a bug in the producer.
    return isinstance(value, int) and not isinstance(value, bool)


def _keys(obj: dict, where: str, required: tuple[str, ...], problems: list[str],
          optional: tuple[str, ...] = ()) -> None:
    for key in required:
        if key not in obj:
            problems.append(f"{where}: missing key '{key}'")
    allowed = set(required) | set(optional)
    for key in obj:
        if not isinstance(key, str) or key.startswith("_"):
            continue
        if key not in allowed:
            problems.append(f"{where}: unknown key '{key}' (allowed: {', '.join(sorted(allowed))})")


def _str(obj: dict, key: str, where: str, problems: list[str], *, nullable: bool = False,
         pattern: re.Pattern[str] | None = None, choices: tuple[str, ...] = (),
         hint: str = "") -> None:
    if key not in obj:
        return
    value = obj[key]
    if value is None and nullable:
        return
    if not isinstance(value, str) or not value.strip():
        kind = "a non-empty string or null" if nullable else "a non-empty string"
        problems.append(f"{where}.{key}: must be {kind} (got {value!r})")
        return
    if choices and value not in choices:
        problems.append(f"{where}.{key}: {value!r} is not one of {', '.join(choices)}")
    elif pattern is not None and not pattern.match(value):
        problems.append(f"{where}.{key}: {value!r} is not {hint or pattern.pattern}")


def _int(obj: dict, key: str, where: str, problems: list[str], *, minimum: int) -> None:
    if key not in obj:
        return
    value = obj[key]
    if not _is_int(value):
        problems.append(f"{where}.{key}: must be an integer (got {value!r})")
    elif value < minimum:
        problems.append(f"{where}.{key}: must be >= {minimum} (got {value})")


def _bool(obj: dict, key: str, where: str, problems: list[str], *, nullable: bool) -> None:
    if key not in obj:
        return
    value = obj[key]
    if value is None and nullable:
        return
    if not isinstance(value, bool):
        kind = "true, false or null" if nullable else "true or false"
        problems.append(f"{where}.{key}: must be {kind} (got {value!r})")


def _dict(value: object, where: str, problems: list[str]) -> dict | None:
    if not isinstance(value, dict):
        problems.append(f"{where}: must be an object (got {type(value).__name__})")
        return None
    return value


def _list(value: object, where: str, problems: list[str]) -> list | None:
    if not isinstance(value, list):
        problems.append(f"{where}: must be a list (got {type(value).__name__})")
        return None
    return value


# --- section validators ---

def _validate_platform(value: object, problems: list[str]) -> dict | None:
    platform = _dict(value, "platform", problems)
    if platform is None:
        return None
    _keys(platform, "platform", _PLATFORM_KEYS, problems, optional=_PLATFORM_OPTIONAL_KEYS)
    if "libc" in platform:
        _str(platform, "libc", "platform", problems)
    _str(platform, "system", "platform", problems, choices=SYSTEMS)
    _str(platform, "machine", "platform", problems, choices=MACHINES)
    for key in ("kernel", "os_family", "distribution", "distribution_version", "python"):
        _str(platform, key, "platform", problems)
    _int(platform, "memory_bytes", "platform", problems, minimum=0)
    _int(platform, "cpu_count", "platform", problems, minimum=0)
    _bool(platform, "secure_boot", "platform", problems, nullable=True)
    _bool(platform, "kernel_headers_installable", "platform", problems, nullable=True)
    return platform


def _validate_pci_device(value: object, where: str, problems: list[str]) -> None:
    device = _dict(value, where, problems)
    if device is None:
        return
    _keys(device, where, _PCI_KEYS, problems)
    _str(device, "bus_id", where, problems, pattern=PCI_BUS_ID_RE,
         hint="a PCI bus id like 0000:01:00.0")
    _str(device, "vendor_id", where, problems, pattern=PCI_ID_RE, hint="a hex id like 0x10de")
    _str(device, "device_id", where, problems, pattern=PCI_ID_RE, hint="a hex id like 0x2684")
    _str(device, "name", where, problems)


def _validate_nvidia(value: object, problems: list[str]) -> dict | None:
    nvidia = _dict(value, "nvidia", problems)
    if nvidia is None:
        return None
    _keys(nvidia, "nvidia", _NVIDIA_KEYS, problems)
    _str(nvidia, "nvml", "nvidia", problems, choices=NVML_STATES)
    for key in ("error", "driver_version", "nvml_version"):
        _str(nvidia, key, "nvidia", problems, nullable=True)
    _str(nvidia, "cuda_version", "nvidia", problems, nullable=True, pattern=DOTTED_VERSION_RE,
         hint="a MAJOR.MINOR version like 12.4")
    devices = _list(nvidia.get("pci_devices", []), "nvidia.pci_devices", problems)
    for i, device in enumerate(devices or []):
        _validate_pci_device(device, f"nvidia.pci_devices[{i}]", problems)
    return nvidia


def _validate_mig_device(value: object, where: str, problems: list[str]) -> None:
    mig = _dict(value, where, problems)
    if mig is None:
        return
    _keys(mig, where, _MIG_KEYS, problems)
    _str(mig, "uuid", where, problems, pattern=MIG_UUID_RE,
         hint="a MIG UUID like MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex)")
    _int(mig, "memory_total_bytes", where, problems, minimum=1)
    _str(mig, "profile", where, problems)


def _validate_gpu(value: object, where: str, problems: list[str]) -> dict | None:
    gpu = _dict(value, where, problems)
    if gpu is None:
        return None
    _keys(gpu, where, _GPU_KEYS, problems, optional=_GPU_OPTIONAL_KEYS)
    _int(gpu, "index", where, problems, minimum=0)
    _str(gpu, "uuid", where, problems, pattern=GPU_UUID_RE,
         hint="a GPU UUID like GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex)")
    _str(gpu, "name", where, problems)
    _int(gpu, "memory_total_bytes", where, problems, minimum=1)
    _str(gpu, "driver_version", where, problems)
    _str(gpu, "cuda_version", where, problems, pattern=DOTTED_VERSION_RE,
         hint="a MAJOR.MINOR version like 12.4")
    _str(gpu, "compute_capability", where, problems, pattern=DOTTED_VERSION_RE,
         hint="a MAJOR.MINOR compute capability like 8.9")
    _str(gpu, "mig_mode", where, problems, choices=MIG_MODES)
    _str(gpu, "pci_bus_id", where, problems, pattern=PCI_BUS_ID_RE,
         hint="a PCI bus id like 00000000:01:00.0")
    if "mig_devices" in gpu:
        migs = _list(gpu["mig_devices"], f"{where}.mig_devices", problems)
        for i, mig in enumerate(migs or []):
            _validate_mig_device(mig, f"{where}.mig_devices[{i}]", problems)
        if migs and gpu.get("mig_mode") != "enabled":
            problems.append(f"{where}.mig_devices: listed while mig_mode is "
                            f"{gpu.get('mig_mode')!r} (MIG instances exist only when 'enabled')")
    return gpu


def _validate_gpus(value: object, problems: list[str]) -> list[dict]:
    gpus = _list(value, "gpus", problems)
    checked = [gpu for i, item in enumerate(gpus or [])
               if (gpu := _validate_gpu(item, f"gpus[{i}]", problems)) is not None]
    _unique(checked, "index", problems)
    _unique(checked, "uuid", problems)
    return checked


def _unique(gpus: list[dict], key: str, problems: list[str]) -> None:
    seen: dict[object, int] = {}
    for i, gpu in enumerate(gpus):
        value = gpu.get(key)
        if isinstance(value, str):
            value = value.lower()
        if value is None:
            continue
        if value in seen:
            problems.append(f"gpus[{i}].{key}: {gpu.get(key)!r} repeats gpus[{seen[value]}]")
        else:
            seen[value] = i


def _validate_apple(value: object, problems: list[str]) -> dict | None:
    if value is None:
        return None
    apple = _dict(value, "apple", problems)
    if apple is None:
        return None
    _keys(apple, "apple", _APPLE_KEYS, problems, _APPLE_OPTIONAL_KEYS)
    _str(apple, "chip", "apple", problems)
    _int(apple, "unified_memory_bytes", "apple", problems, minimum=1)
    _bool(apple, "metal", "apple", problems, nullable=False)
    _str(apple, "macos_version", "apple", problems, pattern=re.compile(r"^\d+(\.\d+){0,2}$"),
         hint="a macOS version such as 14.5")
    _str(apple, "macos_build", "apple", problems)
    if apple.get("gpu_cores") is not None:
        _int(apple, "gpu_cores", "apple", problems, minimum=1)
    _int(apple, "wired_limit_mb", "apple", problems, minimum=0)
    _int(apple, "metal_budget_bytes", "apple", problems, minimum=1)
    _str(apple, "metal_budget_basis", "apple", problems,
         choices=("wired_limit", "default_share"))
    _bool(apple, "filevault", "apple", problems, nullable=True)
    _bool(apple, "command_line_tools", "apple", problems, nullable=False)
    python = apple.get("engine_python")
    if python is not None:
        found = _dict(python, "apple.engine_python", problems)
        if found is not None:
            _keys(found, "apple.engine_python", ("path", "version"), problems)
            _str(found, "path", "apple.engine_python", problems)
            _str(found, "version", "apple.engine_python", problems)
    return apple


def _check_consistency(platform: dict | None, nvidia: dict | None, gpus: list[dict],
                       apple: dict | None, problems: list[str]) -> None:
    """Cross-field rules: each catches a producer bug that would mislead the planner."""
    if nvidia is not None:
        state = nvidia.get("nvml")
        if state != "ok" and gpus:
            problems.append(f"gpus: lists {len(gpus)} GPU(s) although nvidia.nvml is {state!r} "
                            "(GPUs can only be enumerated when NVML works)")
        if state == "ok" and nvidia.get("error") is not None:
            problems.append("nvidia.error: must be null when nvidia.nvml is 'ok'")
        if state == "ok" and nvidia.get("driver_version") is None:
            problems.append("nvidia.driver_version: missing although nvidia.nvml is 'ok'")
        if state in NVML_FAILURES and not nvidia.get("error"):
            problems.append(f"nvidia.error: must say what failed when nvidia.nvml is {state!r}")
        if state == "absent" and nvidia.get("pci_devices"):
            problems.append("nvidia.pci_devices: NVIDIA devices listed although nvidia.nvml is "
                            "'absent' (use 'library_not_found' when hardware is present)")
    if apple is not None and platform is not None and (
            platform.get("system"), platform.get("machine")) != ("Darwin", "arm64"):
        problems.append("apple: Apple Silicon facts on a host that is not Darwin/arm64 "
                        f"({platform.get('system')}/{platform.get('machine')})")


def validate_host_facts(data: object) -> list[str]:
    """Every problem with ``data`` as host facts, as ``"path: problem"`` lines; [] when valid.

    All problems are collected rather than stopping at the first, so one run of ``facts`` shows
    everything a broken producer got wrong.
    """
    problems: list[str] = []
    top = _dict(data, "facts", problems)
    if top is None:
        return problems
    _keys(top, "facts", _TOP_KEYS, problems)
    if "schema" in top and top["schema"] != SCHEMA_VERSION:
        problems.append(f"facts.schema: unsupported schema {top['schema']!r} "
                        f"(this version reads schema {SCHEMA_VERSION}; re-run 'facts --save')")
    platform = _validate_platform(top["platform"], problems) if "platform" in top else None
    nvidia = _validate_nvidia(top["nvidia"], problems) if "nvidia" in top else None
    gpus = _validate_gpus(top["gpus"], problems) if "gpus" in top else []
    apple = _validate_apple(top["apple"], problems) if "apple" in top else None
    _check_consistency(platform, nvidia, gpus, apple, problems)
    return problems


def load_host_facts(path: str | Path) -> HostFacts:
    """Read and validate a facts file; raise :class:`UsageError` naming the file and problems."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read host facts: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: "
                         f"{exc.msg}") from None
    problems = validate_host_facts(data)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise UsageError(f"{path}: invalid host facts ({len(problems)} problem(s)):\n{lines}")
    return cast(HostFacts, data)


# --- helpers for the planner ---

def nvidia_gpus(facts: HostFacts) -> list[GpuFacts]:
    """The NVIDIA GPUs NVML enumerated, in index order (empty unless ``nvml`` is ``ok``)."""
    return sorted(facts["gpus"], key=lambda gpu: gpu["index"])


def is_apple_silicon(facts: HostFacts) -> bool:
    """True for a Mac with an Apple chip (the only macOS hosts the planner supports)."""
    platform = facts["platform"]
    return (facts.get("apple") is not None and platform["system"] == "Darwin"
            and platform["machine"] == "arm64")


def find_gpu(facts: HostFacts, selector: int | str) -> GpuFacts | None:
    """The GPU an inventory ``gpus`` entry names, or None when the host has no such GPU.

    ``selector`` is an NVML index (int, or a string of digits as YAML sometimes gives it), a
    ``GPU-...`` UUID, or a ``MIG-...`` UUID. UUIDs compare case-insensitively. For a MIG UUID
    listed in a GPU's ``mig_devices`` the result is a copy of the parent GPU's facts with that
    instance's UUID, memory and profile, so a VRAM check sees the slice's memory, not the whole
    card's. Indices are not stable across reboots or driver changes; UUIDs are.
    """
    if isinstance(selector, bool):
        return None
    if isinstance(selector, str) and selector.strip().isdigit():
        selector = int(selector.strip())
    if isinstance(selector, int):
        return next((gpu for gpu in facts["gpus"] if gpu["index"] == selector), None)
    if not isinstance(selector, str):
        return None
    wanted = selector.strip().lower()
    if wanted.startswith("gpu-"):
        return next((gpu for gpu in facts["gpus"] if gpu["uuid"].lower() == wanted), None)
    if wanted.startswith("mig-"):
        return _find_mig(facts, wanted)
    return None


def _find_mig(facts: HostFacts, wanted: str) -> GpuFacts | None:
    for gpu in facts["gpus"]:
        for mig in gpu.get("mig_devices", []):
            if mig["uuid"].lower() == wanted:
                slice_facts = cast(GpuFacts, dict(gpu))
                slice_facts["uuid"] = mig["uuid"]
                slice_facts["memory_total_bytes"] = mig["memory_total_bytes"]
                slice_facts["name"] = f"{gpu['name']} MIG {mig['profile']}"
                slice_facts.pop("mig_devices", None)
                return slice_facts
    return None
