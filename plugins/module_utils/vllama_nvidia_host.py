"""Read a host's NVIDIA state: PCI devices, NVML, the loaded kernel module, Secure Boot.

Shared by the ``vllama_host_facts`` and ``vllama_gpu_health`` modules. Standard library only and
Python 3.9 compatible (RHEL 9's system Python). NVML is read through ``pynvml`` (nvidia-ml-py):
by default the copy carried with these modules (``vllama_pynvml``, a verbatim copy of the pinned
nvidia-ml-py release), so nothing is ever pip-installed on the host. ``pynvml_path`` imports
another ``pynvml`` first (the tests put a mock NVML there; no GPU exists on the test machines).

Every filesystem path is below ``sysfs_root`` (default ``/sys``) or ``modules_root`` (default
``/lib/modules``) so the tests can point the code at a fake tree.
"""

from __future__ import annotations

import contextlib
import glob
import lzma
import os
import subprocess
import sys

NVIDIA_VENDOR = "0x10de"
EFI_GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
# PCI class codes of GPUs: VGA compatible controller, 3D controller.
GPU_CLASSES = ("0x0300", "0x0302")
# Turing (TU10x/TU11x) starts at PCI device id 0x1e00; every later generation is above it.
# NVIDIA's open kernel modules support Turing and newer only.
FIRST_TURING_DEVICE_ID = 0x1E00
LIB_GLOBS = ("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.*.*", "/usr/lib64/libnvidia-ml.so.*.*",
             "/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.*.*", "/usr/lib/libnvidia-ml.so.*.*")


def read_text(path, default=""):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return default


def run(cmd, timeout=60):
    """Run ``cmd``; None when it cannot be started or times out."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


# --- PCI bus and firmware ---

def pci_nvidia_devices(sysfs_root="/sys"):
    """NVIDIA GPUs on the PCI bus, found through sysfs whether or not a driver is loaded."""
    devices = []
    for dev in sorted(glob.glob(os.path.join(sysfs_root, "bus/pci/devices/*"))):
        if read_text(os.path.join(dev, "vendor")).lower() != NVIDIA_VENDOR:
            continue
        if not read_text(os.path.join(dev, "class")).lower().startswith(GPU_CLASSES):
            continue
        device_id = read_text(os.path.join(dev, "device")).lower()
        driver = os.path.basename(os.path.realpath(os.path.join(dev, "driver"))) if (
            os.path.exists(os.path.join(dev, "driver"))) else ""
        name = "NVIDIA device " + device_id
        if driver:
            name += " (driver " + driver + ")"
        devices.append({"bus_id": os.path.basename(dev), "vendor_id": NVIDIA_VENDOR,
                        "device_id": device_id, "name": name})
    return devices


def secure_boot(sysfs_root="/sys"):
    """True/False from the SecureBoot EFI variable; False on legacy BIOS; None when unknown."""
    path = os.path.join(sysfs_root, "firmware/efi/efivars", "SecureBoot-" + EFI_GLOBAL_GUID)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError:
        raw = None
    # efivarfs: 4 bytes of attributes, then the value (1 byte: 1 = enabled).
    if raw is not None and len(raw) >= 5:
        return raw[4] == 1
    if os.path.isdir(os.path.join(sysfs_root, "firmware/efi")):
        return None
    return False


def headers_installable(family, kernel, modules_root="/lib/modules"):
    """Whether the running kernel's headers are installed or installable from the sources."""
    if os.path.isdir(os.path.join(modules_root, kernel, "build")):
        return True
    if family == "Debian":
        out = run(["apt-cache", "policy", "linux-headers-" + kernel])
        if out is None or out.returncode != 0:
            return None
        for line in out.stdout.splitlines():
            if line.strip().startswith("Candidate:"):
                return line.split(":", 1)[1].strip() not in ("", "(none)")
        return False
    if family == "RedHat":
        out = run(["dnf", "-q", "repoquery", "--available", "kernel-devel-" + kernel])
        if out is None:
            return None
        return out.returncode == 0 and bool(out.stdout.strip())
    return None


# --- NVML ---

def load_pynvml(pynvml_path=""):
    """The pynvml module: from ``pynvml_path`` when given, else the copy carried with us."""
    if pynvml_path:
        if pynvml_path not in sys.path:
            sys.path.insert(0, pynvml_path)
        sys.modules.pop("pynvml", None)
        import pynvml
        return pynvml
    from ansible_collections.vllama.provision.plugins.module_utils import vllama_pynvml
    return vllama_pynvml


def library_versions():
    """Versions of the user-space NVML libraries installed (from their file names)."""
    found = set()
    for pattern in LIB_GLOBS:
        for path in glob.glob(pattern):
            version = os.path.basename(path).split(".so.", 1)[1]
            if version != "1":
                found.add(version)
    return sorted(found)


def nvidia_device_nodes(dev_root="/dev"):
    """The NVIDIA driver's device nodes (``/dev/nvidia*``; ``/dev/dxg`` under WSL)."""
    return sorted(glob.glob(os.path.join(dev_root, "nvidia*"))
                  + glob.glob(os.path.join(dev_root, "dxg")))


def empty_nvidia(pci_devices):
    return {"nvml": "absent", "error": None, "driver_version": None, "cuda_version": None,
            "nvml_version": None, "pci_devices": pci_devices}


def cuda_text(version):
    """NVML's integer CUDA version (12040) as MAJOR.MINOR ("12.4")."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def nvml_facts(pynvml, pci_devices):
    """(nvidia facts, gpu facts list): NVML's view, each failure mapped to its remedy."""
    nvidia = empty_nvidia(pci_devices)
    nvidia["nvml"] = "ok"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        if not pci_devices:
            return empty_nvidia([]), []
        nvidia.update(nvml="library_not_found",
                      error="NVML library not found (libnvidia-ml.so.1): no NVIDIA driver is "
                            "installed")
        return nvidia, []
    except pynvml.NVMLError_DriverNotLoaded as exc:
        nvidia.update(nvml="driver_not_loaded", error=str(exc))
        return nvidia, []
    except pynvml.NVMLError_LibRmVersionMismatch as exc:
        nvidia.update(nvml="mismatch", error=f"Driver/library version mismatch: {exc}")
        return nvidia, []
    except pynvml.NVMLError as exc:
        nvidia.update(nvml="error", error=str(exc))
        return nvidia, []
    gpus = []
    try:
        driver = text(pynvml.nvmlSystemGetDriverVersion())
        cuda = cuda_text(pynvml.nvmlSystemGetCudaDriverVersion_v2())
        nvidia.update(driver_version=driver, cuda_version=cuda,
                      nvml_version=text(pynvml.nvmlSystemGetNVMLVersion()))
        for index in range(pynvml.nvmlDeviceGetCount()):
            gpus.append(_gpu(pynvml, index, driver, cuda))
    except pynvml.NVMLError as exc:
        nvidia.update(nvml="error", error=str(exc), driver_version=None, cuda_version=None,
                      nvml_version=None)
        gpus = []
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return nvidia, gpus


def _gpu(pynvml, index, driver, cuda):
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    mig_devices = []
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
        mig = "enabled" if current == pynvml.NVML_DEVICE_MIG_ENABLE else "disabled"
    except pynvml.NVMLError_NotSupported:
        mig = "unsupported"  # consumer cards and pre-Ampere GPUs
    if mig == "enabled":
        mig_devices = _mig_devices(pynvml, handle)
    gpu = {
        "index": index, "uuid": text(pynvml.nvmlDeviceGetUUID(handle)),
        "name": text(pynvml.nvmlDeviceGetName(handle)),
        "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
        "driver_version": driver, "cuda_version": cuda,
        "compute_capability": f"{major}.{minor}", "mig_mode": mig,
        "pci_bus_id": text(pynvml.nvmlDeviceGetPciInfo(handle).busId),
    }
    if mig_devices:
        gpu["mig_devices"] = mig_devices
    return gpu


def _mig_devices(pynvml, handle):
    found = []
    for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except pynvml.NVMLError_NotFound:
            continue
        found.append({"uuid": text(pynvml.nvmlDeviceGetUUID(mig)),
                      "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(mig).total),
                      "profile": text(pynvml.nvmlDeviceGetName(mig)).rsplit(" ", 1)[-1]})
    return found


def nvidia_facts(pynvml_path="", sysfs_root="/sys"):
    """(nvidia facts, gpus) for a Linux host; explicit empty facts when nothing NVIDIA is here."""
    pci = pci_nvidia_devices(sysfs_root)
    if not (pynvml_path or pci or library_versions() or nvidia_device_nodes()):
        # Nothing NVIDIA here (no device, library or device node): NVML cannot answer, and
        # importing it is most of the facts' cost on a CPU host.
        return empty_nvidia([]), []
    try:
        pynvml = load_pynvml(pynvml_path)
    except ImportError as exc:
        if not pci and not library_versions():
            return empty_nvidia([]), []
        nvidia = empty_nvidia(pci)
        nvidia.update(nvml="error", error=f"cannot import pynvml: {exc}")
        return nvidia, []
    return nvml_facts(pynvml, pci)


# --- the loaded kernel module ---

def loaded_module_version(sysfs_root="/sys"):
    return read_text(os.path.join(sysfs_root, "module/nvidia/version")) or None


def module_files(kernel, modules_root="/lib/modules"):
    """nvidia.ko files installed for ``kernel`` (DKMS, precompiled or distribution builds)."""
    base = os.path.join(modules_root, kernel)
    found = []
    for root, _dirs, files in os.walk(base):
        found += [os.path.join(root, f) for f in files
                  if f.split(".ko", 1)[0] == "nvidia" and ".ko" in f]
    return sorted(found)


def vermagic(path):
    """The ``vermagic`` of a kernel module file: modinfo when present, else read from the file."""
    out = run(["modinfo", "-F", "vermagic", path])
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    try:
        if path.endswith(".xz"):
            with lzma.open(path) as handle:
                data = handle.read()
        else:
            with open(path, "rb") as handle:
                data = handle.read()
    except (OSError, lzma.LZMAError):
        return None
    start = data.find(b"vermagic=")
    if start < 0:
        return None
    end = data.find(b"\0", start)
    return data[start + len("vermagic="):end].decode("utf-8", "replace").strip()


def gpu_health(pynvml_path="", sysfs_root="/sys", modules_root="/lib/modules", kernel=""):
    """GPU health of a host: NVML initialises, driver and library match, module fits the kernel.

    ``applicable`` is False on a host with nothing NVIDIA (no device, no library): such a host is
    healthy with no checks. Each check has ``name``, ``ok`` and a ``detail`` naming the numbers.
    """
    kernel = kernel or os.uname().release
    pci = pci_nvidia_devices(sysfs_root)
    libraries = library_versions()
    loaded = loaded_module_version(sysfs_root)
    nvidia, gpus = nvidia_facts(pynvml_path, sysfs_root)
    applicable = bool(pci or libraries or loaded or nvidia["nvml"] != "absent")
    result = {"applicable": applicable, "healthy": True, "checks": [], "kernel": kernel,
              "nvml": nvidia["nvml"], "driver_version": nvidia["driver_version"],
              "library_versions": libraries, "loaded_module_version": loaded,
              "module_files": [], "gpu_count": len(gpus)}
    if not applicable:
        return result
    checks = result["checks"]
    if nvidia["nvml"] == "ok":
        detail = (f"NVML initialised: {len(gpus)} GPU(s), driver {nvidia['driver_version']}, "
                  f"CUDA {nvidia['cuda_version']}")
    else:
        detail = f"NVML does not initialise ({nvidia['nvml']}): {nvidia['error']}"
    checks.append({"name": "nvml", "ok": nvidia["nvml"] == "ok", "detail": detail})
    checks.append(_versions_check(nvidia, libraries, loaded))
    files = module_files(kernel, modules_root)
    result["module_files"] = files
    checks.append(_module_check(kernel, files))
    result["healthy"] = all(c["ok"] for c in checks)
    return result


def _versions_check(nvidia, libraries, loaded):
    driver = nvidia["driver_version"]
    libs = ", ".join(libraries) or "none"
    if nvidia["nvml"] == "mismatch":
        return {"name": "driver_library_match", "ok": False,
                "detail": f"driver/library version mismatch: kernel module {loaded or 'unknown'}, "
                          f"user-space library {libs}; reboot to load the installed driver "
                          "(typical after an unattended upgrade)"}
    seen = {v for v in [driver, loaded, *libraries] if v}
    if len(seen) > 1:
        return {"name": "driver_library_match", "ok": False,
                "detail": f"versions differ: kernel module {loaded or 'not loaded'}, NVML driver "
                          f"{driver or 'unknown'}, libraries {libs}"}
    if not seen:
        return {"name": "driver_library_match", "ok": False,
                "detail": "no NVIDIA driver version found (no library installed, no module "
                          "loaded)"}
    return {"name": "driver_library_match", "ok": True,
            "detail": f"kernel module, NVML and library agree on {seen.pop()}"}


def _module_check(kernel, files):
    if not files:
        return {"name": "module_for_running_kernel", "ok": False,
                "detail": f"no nvidia kernel module is installed for the running kernel {kernel} "
                          "(DKMS build missing or headers absent)"}
    magics = {path: vermagic(path) for path in files}
    good = [p for p, magic in magics.items() if magic and magic.split()[0] == kernel]
    if good:
        return {"name": "module_for_running_kernel", "ok": True,
                "detail": f"{good[0]} is built for {kernel}"}
    built = ", ".join(sorted({(m or "unknown").split()[0] for m in magics.values()}))
    return {"name": "module_for_running_kernel", "ok": False,
            "detail": f"nvidia module built for {built}, running kernel is {kernel}"}
