#!/usr/bin/python
"""Gather the host facts vllama-provision plans with (platform, NVIDIA GPUs through NVML, Apple).

The result has the one shape defined in vllama_provision/gpu.py (schema 1). Runs on the host with
the standard library only; NVML is read through the nvidia-ml-py module (``pynvml``) when the
host has it (the tool's facts venv), so nothing is pip-installed into the system Python.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_host_facts
short_description: Gather platform and GPU facts for vllama-provision
description:
  - Returns C(vllama_facts) (also as an Ansible fact) in vllama-provision's host facts shape.
  - NVIDIA devices on the PCI bus are listed even when no driver is loaded.
  - A host without a GPU gets explicit empty GPU facts, never an error.
options:
  pynvml_path:
    description: Folder to import C(pynvml) from (the tool's facts venv site-packages).
    type: str
    default: ""
author: vllama-provision
"""

EXAMPLES = r"""
- name: Gather vllama-provision host facts.
  vllama_host_facts:
"""

RETURN = r"""
vllama_facts:
  description: Host facts in vllama-provision's schema 1 shape.
  returned: always
  type: dict
"""

import contextlib
import glob
import os
import platform
import subprocess
import sys

from ansible.module_utils.basic import AnsibleModule

NVIDIA_VENDOR = "0x10de"
SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
# NVML_ERROR_LIB_RM_VERSION_MISMATCH
NVML_MISMATCH = 18


def _read(path, default=""):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return default


def _os_release():
    data = {}
    for line in _read("/etc/os-release").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            data[key] = value.strip().strip('"')
    return data


def _os_family(ids):
    if ids & {"debian", "ubuntu"}:
        return "Debian"
    if ids & {"rhel", "rocky", "almalinux", "centos", "fedora"}:
        return "RedHat"
    return "Other"


def _run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _memory_bytes(system):
    if system == "Darwin":
        out = _run(["sysctl", "-n", "hw.memsize"])
        return int(out.stdout.strip()) if out and out.returncode == 0 else 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _secure_boot():
    raw = None
    try:
        with open(SECURE_BOOT_VAR, "rb") as handle:
            raw = handle.read()
    except OSError:
        pass
    if raw is not None and len(raw) >= 5:
        return raw[4] == 1
    if os.path.isdir("/sys/firmware/efi"):
        return None
    return False  # legacy BIOS boot: no Secure Boot


def _headers_installable(family, kernel):
    if family != "Debian":
        return None
    if os.path.isdir(f"/lib/modules/{kernel}/build"):
        return True
    out = _run(["apt-cache", "show", f"linux-headers-{kernel}"])
    return bool(out and out.returncode == 0 and out.stdout.strip())


def platform_facts():
    system = platform.system()
    machine = platform.machine()
    kernel = platform.release()
    if system == "Darwin":
        out = _run(["sw_vers", "-productVersion"])
        distribution, version, family = "macOS", (out.stdout.strip() if out else ""), "Darwin"
    else:
        release = _os_release()
        ids = {release.get("ID", "")} | set(release.get("ID_LIKE", "").split())
        distribution = release.get("NAME", "Linux").split()[0] or "Linux"
        version = release.get("VERSION_ID", "")
        family = _os_family(ids)
    return {
        "system": system, "machine": machine, "kernel": kernel, "os_family": family,
        "distribution": distribution, "distribution_version": version,
        "python": platform.python_version(), "memory_bytes": _memory_bytes(system),
        "cpu_count": os.cpu_count() or 1,
        "secure_boot": _secure_boot() if system == "Linux" else None,
        "kernel_headers_installable":
            _headers_installable(family, kernel) if system == "Linux" else None,
        "libc": "".join(platform.libc_ver()) if system == "Linux" else "darwin",
    }


def pci_nvidia_devices():
    devices = []
    for dev in sorted(glob.glob("/sys/bus/pci/devices/*")):
        if _read(os.path.join(dev, "vendor")).lower() != NVIDIA_VENDOR:
            continue
        klass = _read(os.path.join(dev, "class"))
        if not klass.startswith(("0x0300", "0x0302")):  # VGA or 3D controller
            continue
        devices.append({"bus_id": os.path.basename(dev), "vendor_id": NVIDIA_VENDOR,
                        "device_id": _read(os.path.join(dev, "device")).lower(),
                        "name": "NVIDIA device " + _read(os.path.join(dev, "device")).lower()})
    return devices


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_facts(pynvml, pci_devices):
    """Read NVML; each failure state maps to the remedy the planner reports."""
    nvidia = {"nvml": "ok", "error": None, "driver_version": None, "cuda_version": None,
              "nvml_version": None, "pci_devices": pci_devices}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        nvidia["nvml"] = "library_not_found" if pci_devices else "absent"
        nvidia["error"] = "NVML library not found" if pci_devices else None
        return nvidia, []
    except pynvml.NVMLError_DriverNotLoaded as exc:
        nvidia.update(nvml="driver_not_loaded", error=str(exc))
        return nvidia, []
    except pynvml.NVMLError as exc:
        state = "mismatch" if getattr(exc, "value", None) == NVML_MISMATCH else "error"
        nvidia.update(nvml=state, error=str(exc))
        return nvidia, []
    gpus = []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        cuda_text = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        nvidia.update(driver_version=driver, cuda_version=cuda_text,
                      nvml_version=_text(pynvml.nvmlSystemGetNVMLVersion()))
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            try:
                current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
                mig = "enabled" if current == pynvml.NVML_DEVICE_MIG_ENABLE else "disabled"
            except pynvml.NVMLError_NotSupported:
                mig = "unsupported"
            gpus.append({
                "index": index, "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                "name": _text(pynvml.nvmlDeviceGetName(handle)),
                "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                "driver_version": driver, "cuda_version": cuda_text,
                "compute_capability": f"{major}.{minor}", "mig_mode": mig,
                "pci_bus_id": _text(pynvml.nvmlDeviceGetPciInfo(handle).busId),
            })
    except pynvml.NVMLError as exc:
        nvidia.update(nvml="error", error=str(exc), driver_version=None, cuda_version=None,
                      nvml_version=None)
        gpus = []
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return nvidia, gpus


def nvidia_facts(pynvml_path):
    pci = pci_nvidia_devices()
    if pynvml_path and pynvml_path not in sys.path:
        sys.path.insert(0, pynvml_path)
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        return nvml_facts(pynvml, pci)
    present = bool(glob.glob("/usr/lib*/**/libnvidia-ml.so.1", recursive=True))
    if not pci and not present:
        return {"nvml": "absent", "error": None, "driver_version": None, "cuda_version": None,
                "nvml_version": None, "pci_devices": []}, []
    state = "error" if present else "library_not_found"
    error = ("the NVIDIA library is installed but nvidia-ml-py is not available to read it"
             if present else "NVML library not found")
    return {"nvml": state, "error": error, "driver_version": None, "cuda_version": None,
            "nvml_version": None, "pci_devices": pci}, []


def apple_facts(plat):
    if plat["system"] != "Darwin" or plat["machine"] != "arm64":
        return None
    out = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
    chip = out.stdout.strip() if out and out.returncode == 0 else "Apple Silicon"
    return {"chip": chip, "unified_memory_bytes": plat["memory_bytes"], "metal": True}


def main():
    module = AnsibleModule(argument_spec={"pynvml_path": {"type": "str", "default": ""}},
                           supports_check_mode=True)
    plat = platform_facts()
    if plat["system"] == "Linux":
        nvidia, gpus = nvidia_facts(module.params["pynvml_path"])
    else:
        nvidia = {"nvml": "absent", "error": None, "driver_version": None,
                  "cuda_version": None, "nvml_version": None, "pci_devices": []}
        gpus = []
    facts = {"schema": 1, "platform": plat, "nvidia": nvidia, "gpus": gpus,
             "apple": apple_facts(plat)}
    module.exit_json(changed=False, vllama_facts=facts, ansible_facts={"vllama_facts": facts})


if __name__ == "__main__":
    main()
