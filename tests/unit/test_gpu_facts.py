"""The host facts shape: fixtures, validation of malformed facts, and the planner's helpers."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vllama_provision.errors import UsageError
from vllama_provision.gpu import (
    find_gpu,
    is_apple_silicon,
    load_host_facts,
    nvidia_gpus,
    validate_host_facts,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"
ALL_FIXTURES = sorted(FIXTURES.glob("*.json"))
MIB = 1024**2
GIB = 1024**3


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_the_expected_fixtures_exist():
    names = {p.name for p in ALL_FIXTURES}
    assert {"rtx4090.json", "a100-80gb.json", "2x-l40s.json", "m3-max.json", "cpu-only.json",
            "nvidia-no-driver.json", "driver-mismatch.json"} <= names


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.name)
def test_every_fixture_validates_and_cites_its_source(path: Path):
    data = json.loads(path.read_text())
    assert validate_host_facts(data) == []
    assert isinstance(data.get("_source"), str) and len(data["_source"]) > 40
    facts = load_host_facts(path)
    assert isinstance(facts["gpus"], list)


# Memory totals as nvidia-smi prints them (MiB) and Apple's configuration (GB = GiB here).
@pytest.mark.parametrize(("name", "count", "total_bytes"), [
    ("rtx4090.json", 1, 24564 * MIB),
    ("a100-80gb.json", 1, 81920 * MIB),
    ("2x-l40s.json", 2, 46068 * MIB),
])
def test_fixture_memory_matches_nvidia_smi(name: str, count: int, total_bytes: int):
    gpus = load(name)["gpus"]
    assert len(gpus) == count
    assert all(g["memory_total_bytes"] == total_bytes for g in gpus)


def test_rtx4090_fixture_is_the_contract_example_size():
    # The contract's example value for an RTX 4090 is 25757220864 bytes = 24564 MiB.
    assert load("rtx4090.json")["gpus"][0]["memory_total_bytes"] == 25757220864


def test_m3_max_fixture_is_apple_silicon_with_unified_memory():
    facts = load_host_facts(FIXTURES / "m3-max.json")
    assert is_apple_silicon(facts)
    apple = facts["apple"]
    assert apple is not None
    assert {k: apple[k] for k in ("chip", "unified_memory_bytes", "metal")} == {
        "chip": "Apple M3 Max", "unified_memory_bytes": 48 * GIB, "metal": True}
    assert nvidia_gpus(facts) == []


def test_cpu_only_and_failure_fixtures_have_no_gpus_but_say_why():
    cpu = load("cpu-only.json")
    assert cpu["gpus"] == [] and cpu["nvidia"]["nvml"] == "absent"
    no_driver = load("nvidia-no-driver.json")
    assert no_driver["nvidia"]["nvml"] == "library_not_found"
    assert no_driver["nvidia"]["pci_devices"][0]["vendor_id"] == "0x10de"
    assert no_driver["gpus"] == []
    mismatch = load("driver-mismatch.json")
    assert mismatch["nvidia"]["nvml"] == "mismatch"
    assert "Driver/library version mismatch" in mismatch["nvidia"]["error"]


# --- malformed facts ---

def broken(mutate) -> list[str]:
    data = copy.deepcopy(load("rtx4090.json"))
    mutate(data)
    return validate_host_facts(data)


def has(problems: list[str], *needles: str) -> bool:
    return any(all(n in p for n in needles) for p in problems)


def test_missing_gpus_key_is_reported():
    problems = broken(lambda d: d.pop("gpus"))
    assert has(problems, "facts", "missing key 'gpus'")


def test_negative_memory_is_reported():
    problems = broken(lambda d: d["gpus"][0].__setitem__("memory_total_bytes", -1))
    assert has(problems, "gpus[0].memory_total_bytes", ">= 1")


def test_bad_uuid_is_reported():
    problems = broken(lambda d: d["gpus"][0].__setitem__("uuid", "GPU-not-a-uuid"))
    assert has(problems, "gpus[0].uuid", "GPU-not-a-uuid")


def test_bad_compute_capability_is_reported():
    problems = broken(lambda d: d["gpus"][0].__setitem__("compute_capability", "sm_89"))
    assert has(problems, "gpus[0].compute_capability", "sm_89")
    problems = broken(lambda d: d["gpus"][0].__setitem__("compute_capability", 8.9))
    assert has(problems, "gpus[0].compute_capability", "string")


@pytest.mark.parametrize(("mutate", "needles"), [
    (lambda d: d.__setitem__("schema", 2), ("facts.schema", "unsupported")),
    (lambda d: d["platform"].__setitem__("system", "Windows"), ("platform.system",)),
    (lambda d: d["platform"].__setitem__("cpu_count", True), ("platform.cpu_count", "integer")),
    (lambda d: d["platform"].__setitem__("secure_boot", "yes"), ("platform.secure_boot",)),
    (lambda d: d["nvidia"].__setitem__("nvml", "broken"), ("nvidia.nvml", "not one of")),
    (lambda d: d["nvidia"].__setitem__("nvml", "mismatch"), ("gpus", "can only be enumerated")),
    (lambda d: d["nvidia"]["pci_devices"][0].__setitem__("vendor_id", "10de"),
     ("nvidia.pci_devices[0].vendor_id",)),
    (lambda d: d["gpus"][0].__setitem__("mig_mode", "on"), ("gpus[0].mig_mode",)),
    (lambda d: d["gpus"][0].__setitem__("pci_bus_id", "1:0.0"), ("gpus[0].pci_bus_id",)),
    (lambda d: d["gpus"][0].__setitem__("cuda_version", "twelve"), ("gpus[0].cuda_version",)),
    (lambda d: d["gpus"][0].__setitem__("memroy_total_bytes", 1), ("unknown key",)),
    (lambda d: d["gpus"].append(dict(d["gpus"][0])), ("gpus[1].index", "repeats gpus[0]")),
    (lambda d: d.__setitem__("apple", {"chip": "Apple M3", "unified_memory_bytes": 1,
                                       "metal": True}), ("apple", "not Darwin/arm64")),
    (lambda d: d.__setitem__("gpus", {}), ("gpus", "must be a list")),
])
def test_other_malformed_facts_are_reported(mutate, needles):
    assert has(broken(mutate), *needles)


def test_all_problems_are_collected_not_just_the_first():
    def many(d):
        d["gpus"][0]["uuid"] = "nope"
        d["gpus"][0]["memory_total_bytes"] = -5
        d["platform"].pop("kernel")
    assert broken(many) == [
        "platform: missing key 'kernel'",
        "gpus[0].uuid: 'nope' is not a GPU UUID like GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx "
        "(hex)",
        "gpus[0].memory_total_bytes: must be >= 1 (got -5)"]


def test_non_object_facts_are_reported():
    assert validate_host_facts([]) == ["facts: must be an object (got list)"]


def test_load_rejects_invalid_json_with_the_file_name(tmp_path: Path):
    bad = tmp_path / "facts.json"
    bad.write_text('{"schema": 1,')
    with pytest.raises(UsageError, match=r"facts\.json: not valid JSON at line 1"):
        load_host_facts(bad)


def test_load_rejects_invalid_facts_listing_the_problems(tmp_path: Path):
    data = load("rtx4090.json")
    del data["gpus"]
    path = tmp_path / "host.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="missing key 'gpus'") as info:
        load_host_facts(path)
    assert str(path) in str(info.value)


def test_load_missing_file_is_a_usage_error(tmp_path: Path):
    with pytest.raises(UsageError, match="cannot read host facts"):
        load_host_facts(tmp_path / "absent.json")


# --- helpers ---

def test_nvidia_gpus_sorted_by_index():
    facts = load_host_facts(FIXTURES / "2x-l40s.json")
    facts["gpus"].reverse()
    assert [g["index"] for g in nvidia_gpus(facts)] == [0, 1]


def test_is_apple_silicon_only_for_the_mac():
    results = {p.name: is_apple_silicon(load_host_facts(p)) for p in ALL_FIXTURES}
    assert [name for name, apple in results.items() if apple] == ["m3-max.json"]


def test_find_gpu_by_index_digit_string_and_uuid():
    facts = load_host_facts(FIXTURES / "2x-l40s.json")
    second = facts["gpus"][1]
    assert find_gpu(facts, 1) is second
    assert find_gpu(facts, "1") is second
    assert find_gpu(facts, second["uuid"]) is second
    assert find_gpu(facts, second["uuid"].upper().replace("GPU-", "gpu-")) is second
    assert find_gpu(facts, 2) is None
    assert find_gpu(facts, "GPU-00000000-0000-0000-0000-000000000000") is None
    assert find_gpu(facts, True) is None
    assert find_gpu(facts, "first") is None


def test_find_gpu_mig_uuid_is_none_unless_listed():
    facts = load_host_facts(FIXTURES / "a100-80gb.json")
    mig_uuid = "MIG-1a2b3c4d-0000-4000-8000-00000000abcd"
    assert find_gpu(facts, mig_uuid) is None

    facts["gpus"][0]["mig_mode"] = "enabled"
    facts["gpus"][0]["mig_devices"] = [
        {"uuid": mig_uuid, "memory_total_bytes": 19968 * MIB, "profile": "2g.20gb"}]
    assert validate_host_facts(facts) == []
    found = find_gpu(facts, mig_uuid.upper().replace("MIG-", "mig-"))
    assert found is not None
    assert found["uuid"] == mig_uuid
    assert found["memory_total_bytes"] == 19968 * MIB
    assert found["index"] == 0 and "2g.20gb" in found["name"]
    # The parent is untouched.
    assert facts["gpus"][0]["memory_total_bytes"] == 81920 * MIB


def test_mig_devices_require_mig_enabled():
    def add_mig(d):
        d["gpus"][0]["mig_devices"] = [{"uuid": "MIG-1a2b3c4d-0000-4000-8000-00000000abcd",
                                        "memory_total_bytes": 1, "profile": "1g.10gb"}]
    assert has(broken(add_mig), "mig_devices", "'enabled'")


def test_gpu_module_does_not_import_pynvml():
    code = "import sys, vllama_provision.gpu; assert 'pynvml' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
