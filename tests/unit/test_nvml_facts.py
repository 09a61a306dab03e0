"""The NVIDIA facts and GPU health code of the facts modules, in-process, against the MOCK NVML.

No GPU exists here: tests/fixtures/mock_nvml/pynvml.py stands in for NVML and raises the REAL
exception classes of the installed nvidia-ml-py. The "no library" cases use the real nvidia-ml-py
itself (libnvidia-ml.so.1 really is absent here). sysfs is a fake tree under tmp_path.
The same code runs through real Ansible on a lab host in tests/gpu/test_gpu_facts_lab.py.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
import zlib
from pathlib import Path
from types import ModuleType

import pynvml
import pytest

from vllama_provision.gpu import validate_host_facts

ROOT = Path(__file__).resolve().parents[2]
MODULE_UTILS = ROOT / "plugins/module_utils"
MOCK = ROOT / "tests/fixtures/mock_nvml/pynvml.py"
FIXTURES = ROOT / "tests/fixtures/gpu"
GIB = 1024**3


def _load(name: str, path: Path, register: bool = False) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if register:  # pynvml looks itself up in sys.modules
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


host = _load("vllama_nvidia_host_under_test", MODULE_UTILS / "vllama_nvidia_host.py")


@pytest.fixture
def mock() -> ModuleType:
    return _load("mock_pynvml_under_test", MOCK)


RTX4090 = {"uuid": "GPU-5ba5a3b0-6bb1-4d1c-9a2c-0f3b0e2b6a11", "name": "NVIDIA GeForce RTX 4090",
           "memory_total": 25757220864, "compute_capability": [8, 9], "mig": "unsupported",
           "pci_bus_id": "00000000:01:00.0"}
A100 = {"uuid": "GPU-1a2b3c4d-0000-4000-8000-000000000001", "name": "NVIDIA A100-SXM4-80GB",
        "memory_total": 85899345920, "compute_capability": [8, 0], "mig": "enabled",
        "pci_bus_id": "00000000:41:00.0",
        "mig_devices": [{"uuid": "MIG-1a2b3c4d-0000-4000-8000-00000000abcd",
                         "memory_total": 20937965568, "profile": "2g.20gb"}]}
DRIVER = {"driver_version": "550.127.08", "cuda_driver_version": 12040,
          "nvml_version": "12.550.127.08"}


def fake_sysfs(root: Path, devices: dict[str, tuple[str, str]] = {},  # noqa: B006 - read only
               module_version: str | None = None, secure_boot: int | None = None,
               efi: bool = False) -> Path:
    """A sysfs tree: PCI devices {bus_id: (vendor, device)} (class 0x030200), module, EFI."""
    for bus_id, (vendor, device) in devices.items():
        dev = root / "bus/pci/devices" / bus_id
        dev.mkdir(parents=True)
        (dev / "vendor").write_text(vendor + "\n")
        (dev / "device").write_text(device + "\n")
        (dev / "class").write_text("0x030200\n")
    (root / "bus/pci/devices").mkdir(parents=True, exist_ok=True)
    # a non-GPU NVIDIA function (the card's audio controller) is not a GPU
    audio = root / "bus/pci/devices/0000:01:00.1"
    audio.mkdir()
    (audio / "vendor").write_text("0x10de\n")
    (audio / "device").write_text("0x22ba\n")
    (audio / "class").write_text("0x040300\n")
    if module_version:
        (root / "module/nvidia").mkdir(parents=True)
        (root / "module/nvidia/version").write_text(module_version + "\n")
    if efi or secure_boot is not None:
        (root / "firmware/efi/efivars").mkdir(parents=True)
    if secure_boot is not None:
        (root / "firmware/efi/efivars" / f"SecureBoot-{host.EFI_GLOBAL_GUID}").write_bytes(
            bytes([0x06, 0, 0, 0, secure_boot]))
    return root


def whole_facts(nvidia: dict, gpus: list) -> dict:
    facts = json.loads((FIXTURES / "cpu-only.json").read_text())
    facts.update(nvidia=nvidia, gpus=gpus)
    return facts


# --- the carried library is the real nvidia-ml-py ---

def test_the_carried_pynvml_is_the_installed_nvidia_ml_py_byte_for_byte():
    dist = importlib.metadata.distribution("nvidia-ml-py")
    record = next(f for f in dist.files or [] if str(f) == "pynvml.py")
    assert record.hash is not None and record.hash.mode == "sha256"
    digest = record.hash.value
    # Stored as zlib+base64 data (scripts/vendor-pynvml): third-party code out of the checks.
    packed = _load("vllama_pynvml_under_test", MODULE_UTILS / "vllama_pynvml.py",
                   register=True).PYNVML_ZLIB_B64
    carried = zlib.decompress(base64.b64decode(packed))
    ours = base64.urlsafe_b64encode(hashlib.sha256(carried).digest()).rstrip(b"=").decode()
    assert ours == digest, (f"plugins/module_utils/vllama_pynvml.py does not hold "
                            f"nvidia-ml-py {dist.version}'s pynvml.py: run scripts/vendor-pynvml")


def test_the_mock_raises_the_real_exception_classes(mock):
    mock.configure({"init_error": "NVML_ERROR_DRIVER_NOT_LOADED"})
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        mock.nvmlInit()
    assert mock.NVMLError_NotSupported is pynvml.NVMLError_NotSupported
    mock.configure({**DRIVER, "gpus": [RTX4090]})
    mock.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        mock.nvmlDeviceGetMigMode(mock.nvmlDeviceGetHandleByIndex(0))


# --- NVML states ---

def test_no_gpu_gives_explicit_empty_facts_with_the_real_library(tmp_path):
    # The real nvidia-ml-py: libnvidia-ml.so.1 does not exist on this machine.
    pci = host.pci_nvidia_devices(str(fake_sysfs(tmp_path)))
    nvidia, gpus = host.nvml_facts(pynvml, pci)
    assert pci == [] and gpus == []
    assert nvidia == {"nvml": "absent", "error": None, "driver_version": None,
                      "cuda_version": None, "nvml_version": None, "pci_devices": []}
    assert validate_host_facts(whole_facts(nvidia, gpus)) == []


def test_nvidia_on_the_pci_bus_without_a_driver(tmp_path):
    sysfs = fake_sysfs(tmp_path, {"0000:01:00.0": ("0x10de", "0x2684"),
                                  "0000:02:00.0": ("0x8086", "0x56a0")})
    pci = host.pci_nvidia_devices(str(sysfs))
    nvidia, gpus = host.nvml_facts(pynvml, pci)  # real library: not found
    assert gpus == []
    assert nvidia["nvml"] == "library_not_found"
    assert "no NVIDIA driver is installed" in nvidia["error"]
    assert [(d["bus_id"], d["device_id"]) for d in nvidia["pci_devices"]] == [
        ("0000:01:00.0", "0x2684")]
    assert validate_host_facts(whole_facts(nvidia, gpus)) == []


def test_driver_not_loaded(mock, tmp_path):
    mock.configure({"init_error": "NVML_ERROR_DRIVER_NOT_LOADED"})
    pci = host.pci_nvidia_devices(str(fake_sysfs(tmp_path, {"0000:01:00.0": ("0x10de",
                                                                             "0x2684")})))
    nvidia, gpus = host.nvml_facts(mock, pci)
    assert (nvidia["nvml"], nvidia["error"], gpus) == ("driver_not_loaded", "Driver Not Loaded", [])
    assert validate_host_facts(whole_facts(nvidia, gpus)) == []


def test_driver_library_mismatch(mock):
    mock.configure({"init_error": "NVML_ERROR_LIB_RM_VERSION_MISMATCH"})
    nvidia, gpus = host.nvml_facts(mock, [])
    assert nvidia["nvml"] == "mismatch" and gpus == []
    assert nvidia["error"].startswith("Driver/library version mismatch")
    assert "RM has detected an NVML/RM version mismatch" in nvidia["error"]  # the real text
    assert validate_host_facts(whole_facts(nvidia, gpus)) == []


def test_other_nvml_errors_are_reported_as_error(mock):
    mock.configure({"init_error": "NVML_ERROR_NO_PERMISSION"})
    nvidia, _ = host.nvml_facts(mock, [])
    assert nvidia["nvml"] == "error" and nvidia["error"] == "Insufficient Permissions"


def test_a_consumer_card_mig_not_supported(mock):
    mock.configure({**DRIVER, "gpus": [RTX4090]})
    nvidia, gpus = host.nvml_facts(mock, [])
    assert nvidia["nvml"] == "ok" and nvidia["cuda_version"] == "12.4"
    assert gpus == [{"index": 0, "uuid": RTX4090["uuid"], "name": "NVIDIA GeForce RTX 4090",
                     "memory_total_bytes": 25757220864, "driver_version": "550.127.08",
                     "cuda_version": "12.4", "compute_capability": "8.9",
                     "mig_mode": "unsupported", "pci_bus_id": "00000000:01:00.0"}]
    assert mock.CALLS == ["nvmlInit", "nvmlShutdown"]
    facts = whole_facts(nvidia, gpus)
    assert validate_host_facts(facts) == []
    # Same values as the hand-written fixture from a real RTX 4090 host.
    fixture = json.loads((FIXTURES / "rtx4090.json").read_text())["gpus"][0]
    assert gpus[0]["memory_total_bytes"] == fixture["memory_total_bytes"]


def test_mig_enabled_lists_its_instances(mock):
    mock.configure({**DRIVER, "cuda_driver_version": 12080, "gpus": [A100, {
        **RTX4090, "uuid": "GPU-5ba5a3b0-6bb1-4d1c-9a2c-0f3b0e2b6a12", "mig": "disabled",
        "pci_bus_id": "00000000:81:00.0"}]})
    nvidia, gpus = host.nvml_facts(mock, [])
    assert nvidia["cuda_version"] == "12.8"
    assert gpus[0]["mig_mode"] == "enabled"
    assert gpus[0]["mig_devices"] == [{"uuid": "MIG-1a2b3c4d-0000-4000-8000-00000000abcd",
                                       "memory_total_bytes": 20937965568, "profile": "2g.20gb"}]
    assert gpus[1]["mig_mode"] == "disabled" and "mig_devices" not in gpus[1]
    assert validate_host_facts(whole_facts(nvidia, gpus)) == []


def test_an_error_while_enumerating_drops_partial_gpus(mock):
    mock.configure({**DRIVER, "gpus": [RTX4090]})
    mock.nvmlDeviceGetCount = lambda: 2  # NVML says 2, the second handle fails
    nvidia, gpus = host.nvml_facts(mock, [])
    assert nvidia["nvml"] == "error" and gpus == [] and nvidia["driver_version"] is None
    assert validate_host_facts(whole_facts(nvidia, gpus)) == []


# --- firmware ---

@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"secure_boot": 1}, True), ({"secure_boot": 0}, False), ({"efi": True}, None), ({}, False),
])
def test_secure_boot_from_efivars(tmp_path, kwargs, expected):
    assert host.secure_boot(str(fake_sysfs(tmp_path, **kwargs))) is expected


def test_headers_installed_when_the_build_link_exists(tmp_path):
    (tmp_path / "6.1.0-9-amd64/build").mkdir(parents=True)
    assert host.headers_installable("Debian", "6.1.0-9-amd64", str(tmp_path)) is True


# --- GPU health ---

def _module(root: Path, kernel: str, magic_kernel: str) -> Path:
    path = root / kernel / "updates/dkms/nvidia.ko"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x7fELF...\0license=NVIDIA\0vermagic=" + magic_kernel.encode()
                     + b" SMP preempt mod_unload modversions \0name=nvidia\0")
    return path


def _health(monkeypatch, mock, tmp_path, scenario, *, loaded, libraries, magic_kernel="6.1.0-9"):
    mock.configure(scenario)
    monkeypatch.setattr(host, "load_pynvml", lambda path="": mock)
    monkeypatch.setattr(host, "library_versions", lambda: libraries)
    sysfs = fake_sysfs(tmp_path / "sys", {"0000:01:00.0": ("0x10de", "0x2684")},
                       module_version=loaded)
    modules = tmp_path / "modules"
    if magic_kernel:
        _module(modules, "6.1.0-9", magic_kernel)
    return host.gpu_health("", str(sysfs), str(modules), kernel="6.1.0-9")


def checks(result: dict) -> dict[str, bool]:
    return {c["name"]: c["ok"] for c in result["checks"]}


def test_health_ok(monkeypatch, mock, tmp_path):
    result = _health(monkeypatch, mock, tmp_path, {**DRIVER, "gpus": [RTX4090]},
                     loaded="550.127.08", libraries=["550.127.08"])
    assert result["applicable"] and result["healthy"], result
    assert checks(result) == {"nvml": True, "driver_library_match": True,
                              "module_for_running_kernel": True}


def test_health_mismatch_names_both_versions(monkeypatch, mock, tmp_path):
    result = _health(monkeypatch, mock, tmp_path,
                     {"init_error": "NVML_ERROR_LIB_RM_VERSION_MISMATCH"},
                     loaded="550.90.07", libraries=["550.127.08"])
    assert not result["healthy"]
    assert checks(result) == {"nvml": False, "driver_library_match": False,
                              "module_for_running_kernel": True}
    detail = next(c["detail"] for c in result["checks"] if c["name"] == "driver_library_match")
    assert "kernel module 550.90.07" in detail and "library 550.127.08" in detail


def test_health_versions_differ_without_nvml_noticing(monkeypatch, mock, tmp_path):
    result = _health(monkeypatch, mock, tmp_path, {**DRIVER, "gpus": [RTX4090]},
                     loaded="550.127.08", libraries=["550.127.08", "560.35.03"])
    assert checks(result)["driver_library_match"] is False


def test_health_module_built_for_another_kernel(monkeypatch, mock, tmp_path):
    result = _health(monkeypatch, mock, tmp_path, {**DRIVER, "gpus": [RTX4090]},
                     loaded="550.127.08", libraries=["550.127.08"], magic_kernel="6.1.0-8")
    assert checks(result)["module_for_running_kernel"] is False
    assert "built for 6.1.0-8, running kernel is 6.1.0-9" in result["checks"][2]["detail"]


def test_health_no_module_for_the_running_kernel(monkeypatch, mock, tmp_path):
    result = _health(monkeypatch, mock, tmp_path, {"init_error": "NVML_ERROR_DRIVER_NOT_LOADED"},
                     loaded=None, libraries=["550.127.08"], magic_kernel="")
    assert not result["healthy"]
    assert "no nvidia kernel module is installed for the running kernel 6.1.0-9" in \
        result["checks"][2]["detail"]


def test_health_not_applicable_without_anything_nvidia(monkeypatch, tmp_path):
    monkeypatch.setattr(host, "library_versions", lambda: [])
    result = host.gpu_health("", str(fake_sysfs(tmp_path / "sys")), str(tmp_path / "m"),
                             kernel="6.1.0-9")  # the carried library is not importable here
    assert result["applicable"] is False and result["healthy"] is True
    assert result["checks"] == []
