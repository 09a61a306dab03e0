"""Filters of the NVIDIA roles: thin wrappers over vllama_provision.nvidia (one definition)."""

from __future__ import annotations

import functools

from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at use)
    from vllama_provision import nvidia
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None


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


def _checked(func):
    """The filter, after the check that the right vllama-provision package is installed."""
    @functools.wraps(func)
    def checked(*args, **kwargs):
        require_package(VLLAMA_IMPORT_ERROR)
        return func(*args, **kwargs)
    return checked


class FilterModule:
    def filters(self):
        return {
            "vllama_nvidia_kernel_modules": _checked(vllama_nvidia_kernel_modules),
            "vllama_nvidia_cuda_compat": _checked(vllama_nvidia_cuda_compat),
            "vllama_nvidia_cuda_architectures": _checked(vllama_nvidia_cuda_architectures),
            "vllama_ubuntu_kernel_flavour": _checked(vllama_ubuntu_kernel_flavour),
        }
