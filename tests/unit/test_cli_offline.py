"""``plan`` and ``render`` work offline by design, on the example inventory.

The commands run as real subprocesses inside a network namespace with no interface but a downed
loopback (``unshare -n``) when this machine allows it, so any attempt to reach a host, a
registry or a model hub fails. Where ``unshare`` is not available the wrapper is skipped with a
printed reason and the commands run normally (they must still pass); under ``CI=true`` a machine
without network namespaces fails the tests instead: CI must prove "offline".
"""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from vllama_provision import cli
from vllama_provision import facts as fact_cache
from vllama_provision.report import shape_problems

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventory" / "lab.yml"
GPU_FACTS = ROOT / "tests" / "fixtures" / "gpu"

INSTANCE_KEYS = {"name", "engine", "engine_version", "deploy", "release", "endpoint",
                 "served_name", "verified", "verified_from", "ttft_ms", "tokens_per_s"}
HOST_KEYS = {"status", "changed", "failed_task", "error", "instances"}
STATUSES = {"ok", "changed", "failed", "refused", "unreachable", "skipped"}


def _without_network(reason: str) -> list[str]:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: under CI=true the offline tests must run without a network")
    print(f"\n{reason}: plan/render run WITH network access in this test")
    return []


def network_namespace_prefix() -> list[str]:
    """The command prefix that removes the network, or [] (with the reason printed; a
    failure under CI=true)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return _without_network("unshare not found")
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        probe = subprocess.run([unshare, "-rn", "true"], capture_output=True, text=True,
                               check=False)
        if probe.returncode != 0:
            return _without_network(f"unshare -n failed ({probe.stderr.strip()})")
        return [unshare, "-rn"]
    return [unshare, "-n"]


@pytest.fixture(scope="module")
def offline() -> list[str]:
    """The command prefix that removes the network (see network_namespace_prefix)."""
    return network_namespace_prefix()


def test_offline_fails_under_ci_without_a_network_namespace(monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(pytest.fail.Exception, match="unshare not found: under CI=true"):
        network_namespace_prefix()
    monkeypatch.setenv("CI", "false")
    assert network_namespace_prefix() == []


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "VLLAMA_"))}
    env.update(PYTHONPATH=str(ROOT), VLLAMA_STATE_DIR=str(state / "state"),
               VLLAMA_CACHE_DIR=str(state / "cache"), NO_COLOR="1")
    return env


def run(prefix: list[str], args: list[str], state: Path) -> subprocess.CompletedProcess:
    state.mkdir(parents=True, exist_ok=True)
    return subprocess.run([*prefix, sys.executable, "-m", "vllama_provision.cli", *args],
                          capture_output=True, text=True, env=_env(state), cwd=state,
                          timeout=120, check=False)


def test_the_wrapper_really_removes_the_network(offline: list[str], tmp_path: Path) -> None:
    if not offline:
        pytest.skip("no network namespace on this machine (reason printed above)")
    probe = ("import socket\n"
             "try:\n"
             "    socket.create_connection(('192.0.2.1', 80), timeout=3)\n"
             "except OSError as exc:\n"
             "    print(exc.errno)\n")
    proc = subprocess.run([*offline, sys.executable, "-c", probe], capture_output=True,
                          text=True, check=False, timeout=60)
    assert proc.stdout.strip() == "101", proc  # ENETUNREACH: no route at all


@pytest.fixture(scope="module")
def lab_plan(offline: list[str], tmp_path_factory) -> subprocess.CompletedProcess:
    return run(offline, ["plan", str(LAB), "--json", "-"], tmp_path_factory.mktemp("plan"))


def test_plan_works_offline(lab_plan: subprocess.CompletedProcess) -> None:
    assert lab_plan.returncode == 0, lab_plan.stderr
    assert "Traceback" not in lab_plan.stdout + lab_plan.stderr
    # With --json - the human-readable plan goes to stderr, the report to stdout.
    for host in ("gpu-01  linux-nvidia (inventory)", "gpu-02  linux-nvidia (inventory)",
                 "mac-studio  macos-arm64 (inventory)"):
        assert host in lab_plan.stderr
    assert "not evaluated: no facts" in lab_plan.stderr
    assert "args: -m vllm.entrypoints.openai.api_server" in lab_plan.stderr


def _check_report_shape(report: dict, command: str) -> None:
    assert shape_problems(report, command) == []
    assert set(report) == {"schema", "hosts", "summary"}
    assert set(report["hosts"]) == {"gpu-01", "gpu-02", "mac-studio", "gateway-01",
                                    "monitoring-01"}
    assert report["hosts"]["gateway-01"]["instances"] == []
    assert report["hosts"]["monitoring-01"]["instances"] == []
    for name, host in report["hosts"].items():
        assert set(host) >= HOST_KEYS, name
        assert host["status"] in STATUSES
        for inst in host["instances"]:
            assert set(inst) >= INSTANCE_KEYS, (name, inst)
            assert inst["verified"] is None and inst["verified_from"] == []
            assert inst["endpoint"].startswith("http://")
            assert len(inst["release"]) == 12
    assert [i["name"] for i in report["hosts"]["gpu-02"]["instances"]] == ["qwen-1-5b",
                                                                          "qwen-0-5b"]
    qwen = report["hosts"]["gpu-01"]["instances"][0]
    assert (qwen["engine"], qwen["deploy"], qwen["served_name"], qwen["endpoint"]) == (
        "vllm", "native", "qwen2.5-7b-instruct", "http://192.0.2.11:8000")
    summary = report["summary"]
    assert summary["command"] == command
    assert summary["exit_code"] == 0
    assert summary["ok"] == 5
    assert set(summary) >= STATUSES


def test_plan_json_report_shape(lab_plan: subprocess.CompletedProcess) -> None:
    # stdout is the report and nothing else, so it can be piped into a JSON tool.
    _check_report_shape(json.loads(lab_plan.stdout), "plan")


def test_render_writes_every_file_under_out_host(offline: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    report_file = tmp_path / "report.json"
    proc = run(offline, ["render", str(LAB), "--out", str(out), "--json", str(report_file)],
               tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(report_file.read_text())
    _check_report_shape(report, "render")
    release = {i["name"]: i["release"] for h in report["hosts"].values()
               for i in h["instances"]}

    expected = {
        f"gpu-01/opt/vllama/instances/qwen-7b/releases/{release['qwen-7b']}/engine.env",
        "gpu-01/etc/systemd/system/vllama-qwen-7b.service",
        f"gpu-02/opt/vllama/instances/qwen-1-5b/releases/{release['qwen-1-5b']}/compose.yml",
        "gpu-02/etc/systemd/system/vllama-qwen-1-5b.service",
        f"gpu-02/opt/vllama/instances/qwen-0-5b/releases/{release['qwen-0-5b']}/compose.yml",
        "gpu-02/etc/systemd/system/vllama-qwen-0-5b.service",
        # A Mac: its release's engine.json, the static plist, the logs' rotation.
        f"mac-studio/opt/vllama/instances/smollm2/releases/{release['smollm2']}/engine.json",
        "mac-studio/Library/LaunchDaemons/org.vllama.smollm2.plist",
        "mac-studio/etc/newsyslog.d/vllama.conf",
        "mac-studio/Library/LaunchDaemons/org.vllama.wired-limit.plist",
        # The gateway: planned from the whole fleet (no key copies here: routes to nothing yet).
        "gateway-01/etc/vllama/gateway/haproxy.cfg",
        "gateway-01/etc/vllama/gateway/gateway.lua",
        "gateway-01/etc/vllama/gateway/models.map",
        "gateway-01/etc/systemd/system/vllama-gateway.service",
        # The monitoring host: Prometheus' files, planned from the whole fleet too.
        "monitoring-01/etc/prometheus/prometheus.yml",
        "monitoring-01/etc/prometheus/vllama-rules.yml",
        "monitoring-01/etc/prometheus/vllama-web.yml",
        "monitoring-01/etc/prometheus/alertmanager.yml",
        "monitoring-01/etc/default/prometheus",
        "monitoring-01/etc/default/prometheus-alertmanager",
        "monitoring-01/etc/systemd/system/prometheus.service.d/vllama.conf",
        # Every Linux host's node exporter (the Mac has none).
        *(f"{host}/etc/default/prometheus-node-exporter"
          for host in ("gpu-01", "gpu-02", "gateway-01", "monitoring-01")),
        # And each NVIDIA host's DCGM exporter unit (rendered only).
        *(f"{host}/etc/systemd/system/vllama-dcgm-exporter.service"
          for host in ("gpu-01", "gpu-02")),
    }
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == expected
    for rel in expected:
        assert f": {out / rel}" in proc.stdout
        # The web configuration (a password hash) is readable by root and Prometheus only.
        mode = 0o640 if rel.endswith("vllama-web.yml") else 0o644
        assert (out / rel).stat().st_mode & 0o777 == mode
        assert (out / rel).read_text().strip(), rel

    unit = (out / "gpu-01/etc/systemd/system/vllama-qwen-7b.service").read_text()
    assert "[Service]" in unit and "ExecStart=" in unit
    compose = yaml.safe_load(
        (out / sorted(r for r in expected if r.endswith("compose.yml"))[0]).read_text())
    assert compose["services"]
    plist = plistlib.loads((out / "mac-studio/Library/LaunchDaemons/org.vllama.smollm2.plist")
                           .read_bytes())
    assert plist["Label"] == "org.vllama.smollm2"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand, the lazily imported ones included."""
    ctx = click.Context(group)
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
    return found


COMMANDS = _commands(cli.cli)


def test_every_expected_command_exists() -> None:
    for name in ("plan", "render", "apply", "verify", "facts", "schema", "key", "lab",
                 "bundle", "upgrade", "rollback", "status", "wheelhouse"):
        assert (name,) in COMMANDS
    assert ("lab", "up") in COMMANDS and ("key", "rotate") in COMMANDS


def test_top_level_help_shows_each_first_sentence_whole(capsys) -> None:
    cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split("Commands:")[1].split())
    assert "..." not in out
    assert ("key API keys: the controller keeps a private (0600) copy of each instance's key."
            in out)
    group = cli.cli
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        first = " ".join((command.help or "").strip().split("\n\n")[0].split())
        first = first[:first.find(". ") + 1] if ". " in first else first
        assert f"{name} {first}" in out, name


@pytest.mark.parametrize("command", [(), *COMMANDS], ids=lambda c: " ".join(c) or "top")
def test_help_of_every_command(command: tuple[str, ...], capsys) -> None:
    try:
        cli.main([*command, "--help"])  # click returns after --help when not standalone
    except SystemExit as exc:
        assert exc.code in (0, None)
    captured = capsys.readouterr()
    out = captured.out
    assert captured.err == ""
    assert out.startswith("Usage: vllama-provision" + "".join(f" {c}" for c in command))
    if len(command) == 1 and command[0] in ("plan", "render", "apply", "verify", "facts",
                                            "status", "upgrade", "rollback", "bundle"):
        assert "--limit" in out and "--json" in out
        assert "'-' writes it to stdout instead of the table" in " ".join(out.split())
    if command and command[-1] == "apply":
        assert "--check" in out and "--diff" in out


def test_help_through_the_real_entry_point(tmp_path: Path) -> None:
    proc = run([], ["--help"], tmp_path)
    assert proc.returncode == 0 and "Commands:" in proc.stdout


def _inventory_copy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(text, encoding="utf-8")
    return path


def _save_facts(monkeypatch, tmp_path: Path, inventory: Path, host: str, fixture: str) -> Path:
    monkeypatch.setenv("VLLAMA_STATE_DIR", str(tmp_path / "work" / "state"))
    data = json.loads((GPU_FACTS / f"{fixture}.json").read_text())
    return fact_cache.save(inventory, host, data)


def test_plan_with_cached_facts_evaluates_vram_fit(offline: list[str], tmp_path: Path,
                                                    monkeypatch) -> None:
    inventory = _inventory_copy(tmp_path, LAB.read_text())
    saved = _save_facts(monkeypatch, tmp_path, inventory, "gpu-01", "2x-l40s")
    assert saved.is_file()
    proc = run(offline, ["plan", str(inventory), "--limit", "gpu-01"], tmp_path / "work")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not evaluated: no facts" not in proc.stdout
    assert proc.stdout.count("ok: qwen-7b: vram: GPU") == 2  # one line per tensor-parallel GPU
    assert "NVIDIA L40S" in proc.stdout


REFUSED = """\
all:
  hosts:
    gpu-09:
      ansible_host: 192.0.2.19
      vllama_platform: linux-nvidia
      vllama_instances:
        - name: qwen-7b
          engine: vllm
          deploy: native
          model: Qwen/Qwen2.5-7B-Instruct
          gpus: [0]
          gpu_memory_utilization: 0.5
"""


def test_refused_plan_exits_1(offline: list[str], tmp_path: Path, monkeypatch) -> None:
    inventory = _inventory_copy(tmp_path, REFUSED)
    _save_facts(monkeypatch, tmp_path, inventory, "gpu-09", "rtx4090")
    report_file = tmp_path / "report.json"
    proc = run(offline, ["plan", str(inventory), "--json", str(report_file)], tmp_path / "work")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "REFUSED: qwen-7b: vram: GPU 0 (NVIDIA GeForce RTX 4090)" in proc.stdout
    report = json.loads(report_file.read_text())
    host = report["hosts"]["gpu-09"]
    assert host["status"] == "refused"
    assert "GPU 0" in host["error"]
    assert report["summary"]["refused"] == 1 and report["summary"]["exit_code"] == 1
