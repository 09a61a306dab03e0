"""GPU health of NVIDIA hosts as `verify` and `status` report it.

On the host, ``vllama_gpu_health`` (plugins/modules, shared code in plugins/
module_utils/vllama_nvidia_host.py) checks that NVML initialises, that the loaded kernel module,
NVML and the installed user-space library agree on one driver version (the classic
"Driver/library version mismatch" after an unattended upgrade without a reboot) and that an nvidia
module is installed for the running kernel. Playbooks get it with::

    - ansible.builtin.include_role: {name: vllama_facts, tasks_from: gpu_health.yml}

which sets the ``vllama_gpu_health`` fact. This module reads that result on the controller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, cast


class GpuCheck(TypedDict):
    name: str  # nvml | driver_library_match | module_for_running_kernel
    ok: bool
    detail: str


class GpuHealth(TypedDict):
    applicable: bool
    healthy: bool
    checks: list[GpuCheck]
    kernel: str
    nvml: str
    driver_version: str | None
    library_versions: list[str]
    loaded_module_version: str | None
    module_files: list[str]
    gpu_count: int


def from_result(result: Mapping[str, Any]) -> GpuHealth | None:
    """The health in a task result of ``vllama_gpu_health`` (or in a host's facts), or None."""
    health = result.get("vllama_gpu_health")
    if health is None:
        health = (result.get("ansible_facts") or {}).get("vllama_gpu_health")
    if not isinstance(health, Mapping) or "healthy" not in health:
        return None
    return cast(GpuHealth, dict(health))


def problems(health: GpuHealth | None) -> list[str]:
    """What is wrong, one line per failed check; [] for a healthy or non-GPU host."""
    if not health or not health["applicable"]:
        return []
    return [f"{c['name']}: {c['detail']}" for c in health["checks"] if not c["ok"]]


def summary(health: GpuHealth | None) -> str:
    """One line for a status table."""
    if health is None:
        return "GPU health unknown (not checked)"
    if not health["applicable"]:
        return "no NVIDIA GPU"
    if health["healthy"]:
        return (f"GPUs healthy: {health['gpu_count']} GPU(s), driver "
                f"{health['driver_version']}, kernel {health['kernel']}")
    return "GPUs UNHEALTHY: " + "; ".join(problems(health))
