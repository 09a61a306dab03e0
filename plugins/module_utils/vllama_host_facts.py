"""Gather the host facts vllama-provision plans with (platform, NVIDIA GPUs through NVML, Apple).

Shared by the vllama_host_facts module and the vllama_state module's converged check (which
gathers them in its own round trip and compares them with the facts the controller planned
from). The result has the one shape defined in vllama_provision/gpu.py (schema 1); standard
library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess

from ansible_collections.vllama.provision.plugins.module_utils import vllama_macos as macos
from ansible_collections.vllama.provision.plugins.module_utils import vllama_nvidia_host as host


def _os_release():
    data = {}
    for line in host.read_text("/etc/os-release").splitlines():
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


# macOS's commands by absolute path, under the command root (empty on a real Mac).
MAC_COMMANDS = {"uname": "/usr/bin/uname", "sw_vers": "/usr/bin/sw_vers",
                "sysctl": "/usr/sbin/sysctl", "system_profiler": "/usr/sbin/system_profiler",
                "fdesetup": "/usr/bin/fdesetup", "xcode-select": "/usr/bin/xcode-select"}
COMMAND_ROOT = {"path": ""}


def _mac(name):
    return COMMAND_ROOT["path"] + MAC_COMMANDS[name]


def _memory_bytes(system):
    if system == "Darwin":
        out = _run([_mac("sysctl"), "-n", "hw.memsize"])
        return int(out.stdout.strip()) if out and out.returncode == 0 else 0
    for line in host.read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def platform_facts(sysfs_root, nvidia_hardware=True):
    """The platform facts; whether kernel headers are installable is asked (``apt-cache``,
    ``dnf``: the slowest part) only on hosts with NVIDIA hardware, the driver's only reader."""
    system, machine, kernel = platform.system(), platform.machine(), platform.release()
    if COMMAND_ROOT["path"]:
        system, machine, kernel = (_stdout([_mac("uname"), flag]).strip()
                                   for flag in ("-s", "-m", "-r"))
    if system == "Darwin":
        out = _run([_mac("sw_vers"), "-productVersion"])
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
        "secure_boot": host.secure_boot(sysfs_root) if system == "Linux" else None,
        "kernel_headers_installable":
            host.headers_installable(family, kernel)
            if system == "Linux" and nvidia_hardware else None,
        "libc": "".join(platform.libc_ver()) if system == "Linux" else "darwin",
    }


def apple_facts(plat):
    """A Mac's facts (Apple Silicon only; None elsewhere, and on Intel Macs, which the planner
    refuses): chip, GPU cores, macOS version, the memory Metal may wire (the fit check's VRAM),
    FileVault, and the Python the engine's venv can be made with."""
    if plat["system"] != "Darwin" or plat["machine"] != "arm64":
        return None
    out = _run([_mac("sysctl"), "-n", "machdep.cpu.brand_string"])
    chip = out.stdout.strip() if out and out.returncode == 0 else "Apple Silicon"
    sw_vers = macos.parse_sw_vers(_stdout([_mac("sw_vers")]))
    wired = macos.parse_sysctl_int(_stdout([_mac("sysctl"), "-n", "iogpu.wired_limit_mb"])) or 0
    budget, basis = macos.metal_budget(plat["memory_bytes"], wired)
    return {"chip": chip, "unified_memory_bytes": plat["memory_bytes"], "metal": True,
            "macos_version": sw_vers["version"], "macos_build": sw_vers["build"],
            "gpu_cores": macos.parse_gpu_cores(
                _stdout([_mac("system_profiler"), "SPDisplaysDataType", "-json"])),
            "wired_limit_mb": wired, "metal_budget_bytes": budget, "metal_budget_basis": basis,
            "filevault": macos.parse_filevault(_stdout([_mac("fdesetup"), "status"])),
            "command_line_tools": _returncode([_mac("xcode-select"), "-p"]) == 0,
            "engine_python": _engine_python()}


def _stdout(cmd):
    out = _run(cmd)
    return out.stdout if out and out.returncode == 0 else ""


def _returncode(cmd):
    out = _run(cmd)
    return out.returncode if out else None


def _engine_python():
    """The first Python 3.10+ of the usual places (None: none; /usr/bin/python3 is only the
    Command Line Tools' 3.9, or their installer's stub without them)."""
    for candidate in macos.PYTHON_CANDIDATES:
        path = COMMAND_ROOT["path"] + candidate
        if not os.access(path, os.X_OK):
            continue
        if candidate == "/usr/bin/python3" and _returncode([_mac("xcode-select"), "-p"]) != 0:
            continue  # the stub: running it opens the Command Line Tools' installer dialog
        out = _run([path, "--version"])
        text = (out.stdout + out.stderr) if out else ""
        if macos.python_usable(text):
            return {"path": path, "version": text.split()[-1]}
    return None


def gather(pynvml_path="", sysfs_root="/sys", macos_command_root=""):
    """The host's facts (schema 1)."""
    COMMAND_ROOT["path"] = (macos_command_root or "").rstrip("/")
    if platform.system() == "Linux" and not COMMAND_ROOT["path"]:
        nvidia, gpus = host.nvidia_facts(pynvml_path, sysfs_root)
    else:
        nvidia, gpus = host.empty_nvidia([]), []
    plat = platform_facts(sysfs_root, nvidia_hardware=bool(gpus or nvidia.get("pci_devices")))
    return {"schema": 1, "platform": plat, "nvidia": nvidia, "gpus": gpus,
            "apple": apple_facts(plat)}


def digest(facts):
    """The facts' identity: what the controller planned from is compared by it (the same
    function runs on the controller, through vllama_provision.facts)."""
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
