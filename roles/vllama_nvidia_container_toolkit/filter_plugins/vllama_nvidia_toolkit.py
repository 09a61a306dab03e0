"""Filters of the container-toolkit role: thin wrappers over vllama_provision.nvidia."""

from __future__ import annotations

from vllama_provision import nvidia


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


class FilterModule:
    def filters(self):
        return {"vllama_nvidia_image_cuda_checks": vllama_nvidia_image_cuda_checks,
                "vllama_nvidia_image_requirements": vllama_nvidia_image_requirements}
