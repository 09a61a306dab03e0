#!/usr/bin/python
"""Gather the host facts vllama-provision plans with (platform, NVIDIA GPUs through NVML, Apple).

The result has the one shape defined in vllama_provision/gpu.py (schema 1). Runs on the host with
the standard library only. NVML is read through nvidia-ml-py (``pynvml``) carried WITH the module
(module_utils/vllama_pynvml.py, a verbatim copy of the pinned release that Ansible ships inside
the module's payload), so nothing is pip-installed into the system Python (PEP 668), no venv has
to exist before the first facts run, and gathering facts stays read-only and works offline.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_host_facts
short_description: Gather platform and GPU facts for vllama-provision
description:
  - Returns C(vllama_facts) (also as an Ansible fact) in vllama-provision's host facts shape.
  - NVIDIA devices on the PCI bus are listed even when no driver is loaded.
  - A host without a GPU gets explicit empty GPU facts, never an error.
  - Whether the running kernel's headers are installable (C(platform.kernel_headers_installable),
    read by the NVIDIA driver role) is asked of the package manager only on hosts with NVIDIA
    hardware; elsewhere it is null (not checked).
options:
  pynvml_path:
    description:
      - Folder to import C(pynvml) from instead of the copy carried with the module.
      - The tests put a mock NVML there (no GPU exists on the test machines).
    type: str
    default: ""
  sysfs_root:
    description: Where sysfs is mounted (a fake tree in tests).
    type: str
    default: /sys
  macos_command_root:
    description:
      - A folder macOS's commands are found under (C(<root>/usr/bin/uname),
        C(<root>/usr/bin/sw_vers), C(<root>/usr/sbin/sysctl)...), and the system and machine
        are then asked of C(<root>/usr/bin/uname) instead of the running kernel.
      - Empty on real hosts. The tests' stand-in Mac (a Linux host imitating macOS's commands
        under such a folder) names it; Linux's own commands stay untouched.
    type: str
    default: ""
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Gather vllama-provision host facts.
  vllama.provision.vllama_host_facts:
"""

RETURN = r"""
vllama_facts:
  description: Host facts in vllama-provision's schema 1 shape.
  returned: always
  type: dict
"""

import os
import platform
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vllama.provision.plugins.module_utils import vllama_macos as macos
from ansible_collections.vllama.provision.plugins.module_utils import vllama_nvidia_host as host


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
    for line in _read("/proc/meminfo").splitlines():
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


def main():
    module = AnsibleModule(argument_spec={"pynvml_path": {"type": "str", "default": ""},
                                          "sysfs_root": {"type": "str", "default": "/sys"},
                                          "macos_command_root": {"type": "str", "default": ""}},
                           supports_check_mode=True)
    COMMAND_ROOT["path"] = module.params["macos_command_root"].rstrip("/")
    if platform.system() == "Linux" and not COMMAND_ROOT["path"]:
        nvidia, gpus = host.nvidia_facts(module.params["pynvml_path"],
                                         module.params["sysfs_root"])
    else:
        nvidia, gpus = host.empty_nvidia([]), []
    plat = platform_facts(module.params["sysfs_root"],
                          nvidia_hardware=bool(gpus or nvidia.get("pci_devices")))
    facts = {"schema": 1, "platform": plat, "nvidia": nvidia, "gpus": gpus,
             "apple": apple_facts(plat)}
    module.exit_json(changed=False, vllama_facts=facts, ansible_facts={"vllama_facts": facts})


if __name__ == "__main__":
    main()
