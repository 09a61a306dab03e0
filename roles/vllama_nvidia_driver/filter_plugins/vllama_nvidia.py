"""Filters of the NVIDIA roles: thin wrappers over vllama_provision.nvidia (one definition)."""

from __future__ import annotations

from vllama_provision import nvidia


def vllama_nvidia_kernel_modules(facts, requested="auto"):
    """{flavour, refuse, reason}: open or proprietary kernel modules for a host's facts."""
    return dict(nvidia.kernel_modules(facts or {}, requested))


def vllama_nvidia_cuda_compat(required, supported, what="the engine image"):
    """{ok, message}: the CUDA version ``what`` needs against what the driver supports."""
    ok, message = nvidia.cuda_compat(str(required), supported or None, what)
    return {"ok": ok, "message": message}


def vllama_nvidia_cuda_architectures(facts_list):
    """CMAKE_CUDA_ARCHITECTURES ("80;89") for the facts of every host given."""
    return nvidia.cuda_architectures([f for f in facts_list or [] if f])


def vllama_ubuntu_kernel_flavour(kernel):
    return nvidia.ubuntu_kernel_flavour(kernel or "")


class FilterModule:
    def filters(self):
        return {
            "vllama_nvidia_kernel_modules": vllama_nvidia_kernel_modules,
            "vllama_nvidia_cuda_compat": vllama_nvidia_cuda_compat,
            "vllama_nvidia_cuda_architectures": vllama_nvidia_cuda_architectures,
            "vllama_ubuntu_kernel_flavour": vllama_ubuntu_kernel_flavour,
        }
