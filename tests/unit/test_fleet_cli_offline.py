"""``upgrade``, ``rollback``, ``status`` and ``plan --engine/--version`` on the example inventory,
without any host: bad input is refused with exit 2 before a host is contacted, and ``plan``
shows the release an upgrade would give each host. The example inventory uses documentation
addresses, and every command here runs without the network (``unshare -n``) where possible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_offline import LAB, offline, run

from vllama_provision import cli
from vllama_provision.report import shape_problems

__all__ = ["offline"]


def test_every_fleet_command_exists() -> None:
    commands = cli.cli.list_commands(None)  # type: ignore[arg-type]
    for name in ("upgrade", "rollback", "status"):
        assert name in commands


@pytest.mark.parametrize(("args", "needle"), [
    (["upgrade", str(LAB), "--engine", "llamacpp", "--version", "0.3.37", "--batch", "0"],
     "--batch '0'"),
    (["upgrade", str(LAB), "--engine", "llamacpp", "--version", "0.3.37", "--batch", "150%"],
     "percentage"),
    (["upgrade", str(LAB), "--engine", "llama", "--version", "0.3.37"], "'llama' is not one of"),
    (["upgrade", str(LAB), "--engine", "llamacpp"], "Missing option '--version'"),
    (["upgrade", str(LAB), "--engine", "llamacpp", "--version", "1", "--max-fail", "-1"],
     "--max-fail"),
    (["rollback", str(LAB), "--batch", "x"], "--batch 'x'"),
    (["plan", str(LAB), "--engine", "llamacpp"], "--engine and --version go together"),
    (["upgrade", "/nonexistent/inv.yml", "--engine", "vllm", "--version", "1"],
     "nonexistent"),
])
def test_bad_fleet_input_exits_2_before_any_host(offline: list[str], tmp_path: Path,
                                                 args: list[str], needle: str) -> None:
    proc = run(offline, args, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state" / "runs").exists(), "an Ansible run was prepared"


def test_plan_shows_the_release_an_upgrade_would_give(offline: list[str],
                                                      tmp_path: Path) -> None:
    base = run(offline, ["plan", str(LAB), "--json", str(tmp_path / "a.json")], tmp_path)
    moved = run(offline, ["plan", str(LAB), "--engine", "llamacpp", "--version", "0.3.99",
                          "--json", str(tmp_path / "b.json")], tmp_path)
    assert base.returncode == 0, base.stderr
    assert shape_problems(json.loads((tmp_path / "a.json").read_text()), "plan") == []
    before = json.loads((tmp_path / "a.json").read_text())["hosts"]
    after = json.loads((tmp_path / "b.json").read_text())["hosts"]
    # One version for a mixed fleet: 0.3.99 is llama-cpp-python's (Linux), not xllamacpp's
    # (the Mac): the Mac is refused with why, before anything would run (exit 1).
    assert moved.returncode == 1, moved.stderr
    assert after["mac-studio"]["status"] == "refused"
    assert "0.3.99 is not a version of llama-server" in after["mac-studio"]["error"]
    assert {h for h, e in after.items() if e["status"] == "refused"} == {"mac-studio"}
    changed = unchanged = 0
    for host, entry in before.items():
        for inst in entry["instances"]:
            new = next(i for i in after[host]["instances"] if i["name"] == inst["name"])
            if inst["engine"] == "llamacpp" and inst["deploy"] == "native":
                assert new["engine_version"] == "0.3.99"
                assert new["release"] != inst["release"]
                changed += 1
            else:
                assert (new["engine_version"], new["release"]) == (
                    inst["engine_version"], inst["release"])
                unchanged += 1
    assert changed and unchanged, (changed, unchanged)


def test_status_of_unreachable_hosts_says_so(offline: list[str], tmp_path: Path) -> None:
    if not offline:
        pytest.skip("needs unshare -n: the example inventory's addresses must not be reached")
    proc = run(offline, ["status", str(LAB), "--limit", "gpu-01", "--json",
                         str(tmp_path / "s.json")], tmp_path)
    assert proc.returncode == 1, proc.stderr
    data = json.loads((tmp_path / "s.json").read_text())
    assert shape_problems(data, "status") == []
    assert data["hosts"]["gpu-01"]["reachable"] is False
    assert data["hosts"]["gpu-01"]["status"] == "unreachable"
    assert data["summary"]["healthy"] is False and data["summary"]["unhealthy"] == ["gpu-01"]
    assert "UNREACHABLE" in proc.stdout



@pytest.mark.parametrize("args", [
    ["facts"], ["verify"], ["apply"], ["status"], ["rollback"],
    ["upgrade", "--engine", "vllm", "--version", "0.11.0"],
    ["key", "rotate", "__INV__", "gpu-01", "qwen-7b"],
], ids=lambda a: " ".join(a[:2]))
def test_every_json_command_reports_an_unreachable_host_in_the_shared_shape(
        offline: list[str], tmp_path: Path, args: list[str]) -> None:
    """Each command that contacts hosts, against gpu-01 (a documentation address, never
    reached: no network here): exit 1, the host `unreachable`, the one report shape, and with
    `--json -` nothing on stdout but the report."""
    if not offline:
        pytest.skip("needs unshare -n: the example inventory's addresses must not be reached")
    if "__INV__" in args:
        command = [a.replace("__INV__", str(LAB)) for a in args]
    else:
        command = [args[0], str(LAB), *args[1:], "--limit", "gpu-01"]
    proc = run(offline, [*command, "--json", "-"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)  # stdout holds the report and nothing else
    name = "key rotate" if args[0] == "key" else args[0]
    assert shape_problems(report, name) == []
    assert report["hosts"]["gpu-01"]["status"] == "unreachable", report["hosts"]["gpu-01"]
    assert report["summary"]["unreachable"] == 1
