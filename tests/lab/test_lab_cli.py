"""The lab command line: usage errors, the no-root exit code, and a real up/status/down."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from labtools import explain, leftovers

from vllama_provision.lab.cli import lab

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vllama_provision.lab.cli", *args]
    if as_nobody and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv is needed to drop root")
        cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VLLAMA_STATE_DIR", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/", timeout=300,
                          check=False)


def test_without_root_it_says_so_and_exits_2() -> None:
    for args in (["status"], ["up", "1", "--lab", "t-noroot"], ["down", "--lab", "t-noroot"]):
        proc = _cli(*args, as_nobody=True)
        assert proc.returncode == 2, explain(proc)
        assert "lab hosts need root and Linux with systemd-nspawn" in proc.stderr
        assert "not root" in proc.stderr


def test_bad_usage_exits_2() -> None:
    runner = CliRunner()
    assert runner.invoke(lab, ["up", "0"]).exit_code == 2
    assert runner.invoke(lab, ["up", "16"]).exit_code == 2
    if os.geteuid() == 0:
        result = runner.invoke(lab, ["up", "1", "--lab", "Not_Valid"])
        assert result.exit_code == 2, result.output
        assert "lab name 'Not_Valid' is not valid" in result.output
        result = runner.invoke(lab, ["up", "1", "--lab", "t-x", "--models-size", "lots"])
        assert result.exit_code == 2, result.output


@pytest.mark.lab
def test_up_status_ssh_down(lab_golden: Path, tmp_path: Path) -> None:
    name = f"t-{secrets.token_hex(4)}"
    inv = tmp_path / "inventory.yml"
    try:
        proc = _cli("up", "1", "--lab", name, "--user", "carol", "--inventory-out", str(inv))
        assert proc.returncode == 0, explain(proc)
        assert proc.stdout.strip() == str(inv)
        hosts = yaml.safe_load(inv.read_text())["all"]["hosts"]
        assert list(hosts) == [f"{name}-1"]
        vars_ = hosts[f"{name}-1"]
        assert vars_["ansible_user"] == "root"
        assert vars_["ansible_host"].startswith("127.0.1.")
        assert vars_["vllama_lab_become_user"] == "carol"
        status = _cli("status")
        assert f"{name}-1" in status.stdout and "running" in status.stdout, explain(status)
        proc = _cli("ssh", f"{name}-1", "--", "hostname")
        assert proc.stdout.strip() == f"{name}-1", explain(proc)
        proc = _cli("pause", f"{name}-1")
        assert proc.returncode == 0 and "paused" in _cli("status").stdout
        assert _cli("resume", f"{name}-1").returncode == 0
    finally:
        down = _cli("down", "--lab", name)
    assert down.returncode == 0, explain(down)
    assert not any(leftovers(name).values()), leftovers(name)
    assert _cli("down", "--lab", name).returncode == 0  # idempotent
