"""Filters of the container-toolkit role: thin wrappers over vllama_provision.nvidia."""

from __future__ import annotations

import functools

from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at use)
    from vllama_provision import nvidia
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None


def vllama_nvidia_image_cuda_checks(requirements, facts, branch=""):
    """[{image, cuda, ok, message}]: each image's CUDA need against what the driver supports."""
    supported, source = nvidia.supported_cuda(facts or {}, str(branch or ""))
    checks = []
    for req in requirements or []:
        ok, message = nvidia.cuda_compat(str(req["cuda"]), supported, req["image"])
        checks.append({**req, "ok": ok, "message": f"{message} ({source})"})
    return checks


def vllama_nvidia_image_requirements(instances):
    return nvidia.image_requirements(instances or [])


def _checked(func):
    """The filter, after the check that the right vllama-provision package is installed."""
    @functools.wraps(func)
    def checked(*args, **kwargs):
        require_package(VLLAMA_IMPORT_ERROR)
        return func(*args, **kwargs)
    return checked


class FilterModule:
    def filters(self):
        return {"vllama_nvidia_image_cuda_checks": _checked(vllama_nvidia_image_cuda_checks),
                "vllama_nvidia_image_requirements": _checked(vllama_nvidia_image_requirements)}
