"""One schema: the role's generated files cannot drift from it, and Ansible agrees with the CLI.

``vllama_provision/schema.py`` generates the engine role's ``meta/argument_specs.yml`` (read by
Ansible's own role argument validation) and ``defaults/main.yml``. These tests compare the
committed files with what the schema generates now, and run the generated argument specs through
Ansible's ``ArgumentSpecValidator`` on the example inventories and on wrong input.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from vllama_provision import paths, schema
from vllama_provision.inventory import load_inventory
from vllama_provision.validation import validate_host

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"
# The role the schema generates files for (its name comes from the schema, not from here).
GENERATED = schema.role_files()
SPECS = ROLES / next(rel for rel in GENERATED if rel.endswith("/meta/argument_specs.yml"))
DEFAULTS = ROLES / next(rel for rel in GENERATED if rel.endswith("/defaults/main.yml"))
ROLE = SPECS.parents[1]
EXAMPLES = [ROOT / "inventory" / "lab.yml", ROOT / "inventory" / "local.yml"]


def _options() -> dict:
    return yaml.safe_load(SPECS.read_text(encoding="utf-8"))["argument_specs"]["main"]["options"]


def _role_params(host_vars: dict, options: dict) -> dict:
    """What Ansible's role argument validation looks at: the variables the spec names."""
    return {k: v for k, v in host_vars.items() if k in options}


def test_committed_role_files_equal_the_generated_ones() -> None:
    generated = schema.role_files()
    roles = {"vllama", "vllama_gateway", "vllama_monitoring", "vllama_node_exporter"}
    assert set(generated) == {f"{role}/{rel}" for role in roles
                              for rel in ("meta/argument_specs.yml", "defaults/main.yml")}
    for role in roles:
        assert (ROLES / role / "tasks" / "main.yml").is_file(), f"{role} must be a real role"
    for rel, text in generated.items():
        committed = (ROLES / rel).read_text(encoding="utf-8")
        assert committed == text, f"roles/{rel} is stale: run `vllama-provision schema --write`"


def test_every_host_option_is_in_both_files() -> None:
    options = _options()
    defaults = yaml.safe_load(DEFAULTS.read_text(encoding="utf-8"))
    names = {o.name for o in schema.HOST_OPTIONS}
    assert set(options) == names
    assert set(defaults) == names
    for opt in schema.HOST_OPTIONS:
        assert options[opt.name]["type"] == opt.type
        expected_default = [] if opt.required else opt.default
        assert defaults[opt.name] == expected_default, opt.name
        if opt.choices:
            assert options[opt.name]["choices"] == list(opt.choices)
    instance = options["vllama_instances"]
    # Gateway hosts may serve none: the validator requires instances on every other host.
    assert instance["elements"] == "dict" and instance["default"] == []
    assert set(instance["options"]) == {o.name for o in schema.INSTANCE_OPTIONS}
    for opt in schema.INSTANCE_OPTIONS:
        entry = instance["options"][opt.name]
        assert entry["type"] == opt.type, opt.name
        assert entry.get("required", False) == opt.required, opt.name
        if not opt.required:
            assert entry["default"] == opt.default, opt.name


def test_constraints_the_spec_cannot_express_are_in_its_descriptions() -> None:
    """Ranges and patterns only the CLI enforces are at least documented in the spec."""
    instance = _options()["vllama_instances"]["options"]
    assert "greater than 0 and at most 1" in instance["gpu_memory_utilization"]["description"]
    assert "from 0 to 65535" in instance["port"]["description"]
    assert "at most 40 characters" in instance["name"]["description"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "VLLAMA_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_schema_check_command_exits_0() -> None:
    proc = subprocess.run([sys.executable, "-m", "vllama_provision.cli", "schema", "--check"],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout


def test_schema_check_fails_on_a_stale_copy(tmp_path: Path, monkeypatch, capsys) -> None:
    """The check can fail: a roles folder whose defaults were edited by hand is reported."""
    from vllama_provision import cli

    copy = tmp_path / "roles"
    for role in {rel.split("/", 1)[0] for rel in schema.role_files()}:
        shutil.copytree(ROLES / role / "meta", copy / role / "meta")
        shutil.copytree(ROLES / role / "defaults", copy / role / "defaults")
    stale = copy / ROLE.name / "defaults" / "main.yml"
    stale.write_text(stale.read_text().replace("vllama_verify_timeout: 600",
                                               "vllama_verify_timeout: 60"))
    monkeypatch.setattr(paths, "roles_dir", lambda: copy)
    with pytest.raises(SystemExit) as exc:
        cli.main(["schema", "--check"])
    assert exc.value.code == 1
    assert str(stale) in capsys.readouterr().err
    cli.main(["schema", "--write"])
    assert f"wrote {stale}" in capsys.readouterr().out
    assert stale.read_text() == schema.defaults_yaml()


@pytest.mark.parametrize("inventory", EXAMPLES, ids=lambda p: p.name)
def test_ansible_accepts_the_example_inventories(inventory: Path) -> None:
    options = _options()
    validator = ArgumentSpecValidator(options)
    hosts = list(load_inventory(inventory))
    assert hosts
    for host in hosts:
        params = _role_params(host.vars, options)
        assert "vllama_instances" in params or host.gateway or host.monitoring
        if not host.instances:
            continue
        result = validator.validate(params)
        assert result.error_messages == [], (host.name, result.error_messages)
        assert validate_host(host.name, host.vars, file=str(inventory), groups=host.groups) == []
        # Ansible fills the defaults from the same schema.
        first = result.validated_parameters["vllama_instances"][0]
        assert first["engine"] in ("auto", "vllm", "llamacpp")
        assert set(first) == {o.name for o in schema.INSTANCE_OPTIONS}


GOOD_INSTANCE = {"name": "qwen", "model": "Qwen/Qwen2.5-7B-Instruct"}

# Host variables that are wrong in a way an Ansible argument spec can express (type, choices,
# required, unknown keys): Ansible's role validation and the CLI must both refuse them.
WRONG = {
    "port not an int": {"vllama_instances": [{**GOOD_INSTANCE, "port": "eighty"}]},
    "gpu_memory_utilization not a number": {
        "vllama_instances": [{**GOOD_INSTANCE, "gpu_memory_utilization": "most"}]},
    "unknown engine": {"vllama_instances": [{**GOOD_INSTANCE, "engine": "tgi"}]},
    "unknown platform": {"vllama_platform": "linux-amd", "vllama_instances": [GOOD_INSTANCE]},
    "misspelt instance key": {"vllama_instances": [{**GOOD_INSTANCE, "prot": 8000}]},
    "missing name": {"vllama_instances": [{"model": "Qwen/Qwen2.5-7B-Instruct"}]},
    "instances not a list of mappings": {"vllama_instances": ["Qwen/Qwen2.5-7B-Instruct"]},
    "verify not a bool": {"vllama_verify": "maybe", "vllama_instances": [GOOD_INSTANCE]},
}


@pytest.mark.parametrize("host_vars", list(WRONG.values()), ids=list(WRONG))
def test_ansible_and_the_cli_both_refuse_a_wrong_type(host_vars: dict) -> None:
    options = _options()
    ansible = ArgumentSpecValidator(options).validate(_role_params(host_vars, options))
    assert ansible.error_messages, "Ansible's role validation accepted it"
    assert validate_host("h", host_vars), "the CLI accepted it"


def test_instances_are_required_except_on_gateway_hosts() -> None:
    """The argument spec lets a host have no instances (gateway hosts serve none); the CLI's
    validator, which the role's preflight runs too, requires them on every other host."""
    host_vars = {"vllama_platform": "linux-nvidia"}
    assert ArgumentSpecValidator(_options()).validate(host_vars).error_messages == []
    problems = validate_host("h", host_vars)
    assert [p.variable for p in problems] == ["vllama_instances"]
    assert "vllama_gateways" in problems[0].render()
    assert validate_host("h", host_vars, groups=["vllama_gateways"]) == []
    assert validate_host("h", {**host_vars, "vllama_instances": []})
    assert validate_host("h", {**host_vars, "vllama_instances": []},
                         groups=["vllama_gateways"]) == []


def test_the_cli_is_stricter_than_ansible_on_bools_and_ranges() -> None:
    """Ansible's int type takes True (bool is an int in Python) and argument specs have no
    ranges; the CLI refuses both, and the role's preflight runs the CLI's validator again."""
    options = _options()
    validator = ArgumentSpecValidator(options)
    for inst in ({**GOOD_INSTANCE, "max_num_seqs": True},
                 {**GOOD_INSTANCE, "gpu_memory_utilization": 1.5},
                 {**GOOD_INSTANCE, "port": 70000}):
        host_vars = {"vllama_instances": [inst]}
        assert validator.validate(host_vars).error_messages == []
        assert validate_host("h", host_vars)
