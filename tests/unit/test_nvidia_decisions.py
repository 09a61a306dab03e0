"""Open or proprietary kernel modules, the CUDA compatibility preflight, CUDA architectures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vllama_provision import nvidia

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def pci_only(*device_ids: str) -> dict:
    facts = load("nvidia-no-driver.json")
    template = facts["nvidia"]["pci_devices"][0]
    facts["nvidia"]["pci_devices"] = [
        {**template, "bus_id": f"0000:{i + 1:02x}:00.0", "device_id": d}
        for i, d in enumerate(device_ids)]
    return facts


# PCI device ids from the PCI ID database: GP102 (Pascal), GV100 (Volta), TU104 (Turing, T4),
# TU116 (GTX 1660), GA102 (Ampere), AD102 (Ada), GH100 (Hopper).
@pytest.mark.parametrize(("device_id", "is_open"), [
    ("0x1b06", False), ("0x1db4", False), ("0x1eb8", True), ("0x2184", True),
    ("0x2204", True), ("0x2684", True), ("0x2330", True),
])
def test_generation_from_the_pci_device_id(device_id, is_open):
    assert nvidia.device_supports_open(device_id) is is_open
    decision = nvidia.kernel_modules(pci_only(device_id))
    assert decision["flavour"] == ("open" if is_open else "proprietary")
    assert not decision["refuse"]


@pytest.mark.parametrize(("cc", "is_open"), [("6.1", False), ("7.0", False), ("7.5", True),
                                              ("8.0", True), ("8.9", True), ("9.0", True),
                                              ("12.0", True)])
def test_generation_from_the_compute_capability(cc, is_open):
    facts = load("rtx4090.json")
    facts["gpus"][0]["compute_capability"] = cc
    assert nvidia.kernel_modules(facts)["flavour"] == ("open" if is_open else "proprietary")


def test_fixtures_with_nvml_use_the_compute_capability():
    assert nvidia.kernel_modules(load("rtx4090.json"))["flavour"] == "open"
    assert nvidia.kernel_modules(load("2x-l40s.json"))["flavour"] == "open"
    assert nvidia.kernel_modules(load("nvidia-no-driver.json"))["flavour"] in nvidia.FLAVOURS


def test_a_mixed_host_gets_proprietary_modules_and_says_which_gpu():
    decision = nvidia.kernel_modules(pci_only("0x2684", "0x1b06"))
    assert decision["flavour"] == "proprietary"
    assert "0x1b06" in decision["reason"] and "0x2684" not in decision["reason"]


def test_open_modules_on_a_pascal_card_are_refused_with_the_reason():
    decision = nvidia.kernel_modules(pci_only("0x1b06"), "open")
    assert decision["refuse"] and decision["flavour"] == ""
    assert "Turing" in decision["reason"] and "0x1b06" in decision["reason"]


def test_an_explicit_choice_is_kept():
    assert nvidia.kernel_modules(pci_only("0x2684"), "proprietary")["flavour"] == "proprietary"
    assert nvidia.kernel_modules(load("cpu-only.json"), "open")["flavour"] == "open"


def test_auto_without_any_gpu_is_refused():
    decision = nvidia.kernel_modules(load("cpu-only.json"))
    assert decision["refuse"] and "vllama_nvidia_driver_kernel_modules" in decision["reason"]


def test_an_unknown_request_is_refused():
    assert nvidia.kernel_modules(pci_only("0x2684"), "closed")["refuse"]


# --- CUDA compatibility: both numbers in every message ---

@pytest.mark.parametrize(("required", "supported", "ok"), [
    ("12.8", "12.4", False), ("12.4", "12.4", True), ("12.4", "12.8", True),
    ("12.10", "12.9", False), ("11.8", "12.0", True), ("13.0", "12.9", False),
])
def test_cuda_compat_compares_numerically_and_names_both_numbers(required, supported, ok):
    result, message = nvidia.cuda_compat(required, supported, "vllm/vllm-openai:v0.9.2")
    assert result is ok
    assert f"needs CUDA >= {required}" in message
    assert f"supports CUDA {supported}" in message
    assert "vllm/vllm-openai:v0.9.2" in message


def test_cuda_compat_without_a_working_driver():
    ok, message = nvidia.cuda_compat("12.8", None)
    assert not ok and "12.8" in message and "unknown" in message


def test_cuda_compat_against_the_drivers_of_the_fixtures():
    # rtx4090.json's driver (580 branch) supports CUDA 13.0: enough for a 12.8 image, not 13.1.
    supported = load("rtx4090.json")["nvidia"]["cuda_version"]
    assert supported == "13.0"
    assert nvidia.cuda_compat("12.8", supported)[0]
    ok, message = nvidia.cuda_compat("13.1", supported)
    assert not ok and "needs CUDA >= 13.1" in message and "supports CUDA 13.0" in message


# --- CUDA architectures and Ubuntu kernel flavours ---

def test_cuda_architectures_cover_the_fleet_once_each():
    fleet = [load("rtx4090.json"), load("a100-80gb.json"), load("2x-l40s.json"),
             load("cpu-only.json")]
    assert nvidia.cuda_architectures(fleet) == "80;89"
    assert nvidia.cuda_architectures([load("cpu-only.json")]) == ""


@pytest.mark.parametrize(("kernel", "flavour"), [
    ("6.8.0-45-generic", "generic"), ("5.15.0-1050-aws", "aws"),
    ("6.8.0-1012-nvidia", "nvidia"), ("6.5.0-14-lowlatency", "lowlatency"),
    ("6.1.0-25-amd64", "amd64"), ("6.18.44-fc-v669", ""),
])
def test_ubuntu_kernel_flavour(kernel, flavour):
    assert nvidia.ubuntu_kernel_flavour(kernel) == flavour


def test_cuda_build_flags_cover_the_fleet():
    from vllama_provision.engines import cmake_args_for

    fleet = [load("rtx4090.json"), load("a100-80gb.json")]
    assert cmake_args_for("cuda", cuda_architectures=nvidia.cuda_architectures(fleet)) == \
        "-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=80;89"
    # Unknown GPUs: llama.cpp's default architecture list, never the build host's GPU alone.
    assert cmake_args_for("cuda") == "-DGGML_CUDA=on -DGGML_NATIVE=OFF"
    assert cmake_args_for("cuda", "aarch64", "90") == "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90"


def test_cuda_wheel_keys_differ_by_gpu_architecture():
    from vllama_provision.wheelhouse import key_for

    def key(*facts):
        archs = nvidia.cuda_architectures([load(f) for f in facts])
        found = key_for("llama-cpp-python", "0.3.36", "cuda", "x86_64", "3.11.2", "glibc2.36",
                        archs)
        assert found is not None
        return found.name

    # Hosts with the same GPU generation share a wheel; an Ampere host never gets an Ada build.
    assert key("rtx4090.json") == key("2x-l40s.json")  # both sm_89
    assert key("rtx4090.json") != key("a100-80gb.json")
    cpu = key_for("llama-cpp-python", "0.3.36", "cpu", "x86_64", "3.11.2", "glibc2.36", "89")
    assert cpu is not None and cpu.cmake_args == "-DGGML_NATIVE=OFF"
