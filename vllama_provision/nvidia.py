"""NVIDIA host decisions the driver, CUDA and container-toolkit roles make from host facts.

Pure functions over the facts shape of :mod:`vllama_provision.gpu` (standard library only, so the
roles' filter plugins can import this module wherever Ansible runs):

* :func:`kernel_modules`: open or proprietary kernel modules. NVIDIA's open modules support
  Turing and newer only; on a bare box NVML is not available yet, so the generation comes from
  the PCI device id (every Turing or later GPU has a device id >= 0x1E00) and, once a driver
  runs, from the compute capability (Turing is 7.5).
* :func:`cuda_compat`: whether the CUDA version an engine image needs is supported by the driver
  (NVML's ``cuda_version``), with both numbers in the message.
* :func:`cuda_architectures`: ``CMAKE_CUDA_ARCHITECTURES`` covering every GPU of a fleet.
* :func:`ubuntu_kernel_flavour`: the flavour part of an Ubuntu kernel release, which names
  Canonical's signed precompiled module packages (``linux-modules-nvidia-550-generic``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

FIRST_TURING_DEVICE_ID = 0x1E00
TURING_COMPUTE = (7, 5)
FLAVOURS = ("open", "proprietary")
REQUESTS = ("auto", "open", "proprietary")
_UBUNTU_KERNEL_RE = re.compile(r"^\d+\.\d+\.\d+-\d+-([a-z0-9][a-z0-9-]*)$")


class ModuleDecision(TypedDict):
    flavour: str  # open | proprietary | "" when refused
    refuse: bool
    reason: str


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def device_supports_open(device_id: str) -> bool:
    """True for a PCI device id (``0x2684``) of a Turing or newer GPU."""
    return int(device_id, 16) >= FIRST_TURING_DEVICE_ID


def compute_supports_open(compute_capability: str) -> bool:
    return _version(compute_capability)[:2] >= TURING_COMPUTE


def _generations(facts: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """(what, supports open modules) per GPU: NVML's view when it works, else the PCI bus."""
    gpus = facts.get("gpus") or []
    if gpus:
        return [(f"GPU {g['index']} {g['name']} (compute capability {g['compute_capability']})",
                 compute_supports_open(g["compute_capability"])) for g in gpus]
    devices = (facts.get("nvidia") or {}).get("pci_devices") or []
    return [(f"PCI {d['bus_id']} device {d['device_id']}", device_supports_open(d["device_id"]))
            for d in devices]


def kernel_modules(facts: Mapping[str, Any], requested: str = "auto") -> ModuleDecision:
    """Open or proprietary kernel modules for a host, or a refusal naming the GPU and reason."""
    if requested not in REQUESTS:
        return {"flavour": "", "refuse": True,
                "reason": f"kernel modules {requested!r}: allowed: {', '.join(REQUESTS)}"}
    found = _generations(facts)
    if not found:
        if requested == "auto":
            return {"flavour": "", "refuse": True,
                    "reason": "no NVIDIA GPU found (NVML and the PCI bus show none): cannot "
                              "choose open or proprietary kernel modules; set "
                              "vllama_nvidia_driver_kernel_modules to open or proprietary"}
        return {"flavour": requested, "refuse": False,
                "reason": f"{requested} kernel modules as configured (no GPU seen)"}
    old = [what for what, is_open in found if not is_open]
    if requested == "open" and old:
        return {"flavour": "", "refuse": True,
                "reason": "open kernel modules support Turing (compute capability 7.5, PCI "
                          f"device id 0x1e00) and newer only; this host has {', '.join(old)}"}
    if requested != "auto":
        return {"flavour": requested, "refuse": False,
                "reason": f"{requested} kernel modules as configured"}
    if old:
        return {"flavour": "proprietary", "refuse": False,
                "reason": f"proprietary kernel modules: pre-Turing GPU(s): {', '.join(old)}"}
    return {"flavour": "open", "refuse": False,
            "reason": "open kernel modules: every GPU is Turing or newer "
                      f"({', '.join(what for what, _ in found)})"}


def cuda_compat(required: str, supported: str | None, what: str = "the engine image"
                ) -> tuple[bool, str]:
    """(ok, message): ``what`` needs CUDA ``required``; the driver supports ``supported``."""
    if not supported:
        return False, (f"{what} needs CUDA >= {required}; the driver's supported CUDA version "
                       "is unknown (no working driver: NVML does not answer)")
    if _version(supported)[:2] < _version(required)[:2]:
        return False, (f"{what} needs CUDA >= {required}; the driver supports CUDA "
                       f"{supported}: install a newer driver branch")
    return True, f"{what} needs CUDA >= {required}; the driver supports CUDA {supported}"


def cuda_architectures(facts: Iterable[Mapping[str, Any]]) -> str:
    """``CMAKE_CUDA_ARCHITECTURES`` for every GPU of the given hosts' facts (``"86;89"``)."""
    archs = {"".join(str(n) for n in _version(g["compute_capability"])[:2])
             for host in facts for g in (host.get("gpus") or [])}
    return ";".join(sorted(archs, key=int))


def ubuntu_kernel_flavour(kernel: str) -> str:
    """``6.8.0-45-generic`` -> ``generic``; ``5.15.0-1050-aws`` -> ``aws``; else ``""``."""
    match = _UBUNTU_KERNEL_RE.match(kernel.strip())
    return match.group(1) if match else ""


# The newest CUDA version each driver branch supports (NVIDIA's CUDA toolkit release notes,
# "CUDA Toolkit and Corresponding Driver Versions"). Used before a driver runs, when NVML cannot
# say yet.
BRANCH_CUDA = {"535": "12.2", "550": "12.4", "560": "12.6", "565": "12.7", "570": "12.8",
               "575": "12.9", "580": "13.0"}


def supported_cuda(facts: Mapping[str, Any], branch: str = "") -> tuple[str | None, str]:
    """(CUDA version the driver supports, where that number comes from)."""
    have = (facts.get("nvidia") or {}).get("cuda_version")
    if have:
        return have, f"driver {(facts.get('nvidia') or {}).get('driver_version')} (NVML)"
    if branch and str(branch) in BRANCH_CUDA:
        return BRANCH_CUDA[str(branch)], f"driver branch {branch} (being installed)"
    return None, "no working driver"


def image_requirements(instances: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The CUDA version each vLLM container image of ``instances`` needs from the driver."""
    from vllama_provision import engines

    found: dict[str, str] = {}
    for inst in instances or []:
        if inst.get("engine", "auto") not in ("auto", "vllm"):
            continue
        if inst.get("deploy", "auto") not in ("auto", "container"):
            continue
        version = str(inst.get("engine_version") or engines.default_version("vllm", "cuda"))
        image = inst.get("image") or f"vllm/vllm-openai:v{version}"
        line = ".".join(version.split(".")[:2])
        found[image] = engines.VLLM_IMAGE_CUDA.get(line, engines.VLLM_IMAGE_CUDA["default"])
    return [{"image": image, "cuda": cuda} for image, cuda in sorted(found.items())]
