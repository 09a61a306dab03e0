"""`molecule test` on real lab hosts: the default scenario (two hosts, converged, idempotent,
verified) and the upgrade scenario (a failed upgrade rolled back, checked by its verify), whose
host then serves a user's own playbook run with the built collection (user_play.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import user_play  # this folder (pytest puts a test's folder on sys.path)
from e2e.conftest import engine_wheel
from labtools import leftovers
from wheels import ensure_relabelled

from vllama_provision import paths
from vllama_provision.lab.state import LabState

pytestmark = [pytest.mark.lab, pytest.mark.molecule]

REPO = Path(__file__).resolve().parents[2]
# Seconds for `molecule test`. The upgrade scenario converges the real role (engine venv, model,
# verification), checks idempotence, prepares a second engine, fails the switch and verifies the
# rollback: 5-9 minutes on a shared 2-core machine at load 4-7, about twice that at load 13.
TIMEOUT = {"default": 900, "upgrade": 1500}


__all__ = ["engine_wheel"]


def test_molecule_default_scenario(lab_golden: Path) -> None:
    _molecule_test("default", ("create", "converge", "idempotence", "verify", "destroy"))


def test_molecule_upgrade_scenario(lab_golden: Path, engine_wheel: list[Path],
                                   tmp_path: Path) -> None:
    ensure_relabelled(engine_wheel[0])  # the new engine build the side effect rolls out
    _molecule_test("upgrade", ("create", "converge", "idempotence", "side_effect", "verify"),
                   destroy=False)
    # Before the host goes: a user's own site.yml with the built collection and wheel, run with
    # plain ansible-playbook on this scenario's host (no lab host of its own).
    try:
        user_play.check(LabState.load("molecule-upgrade").dir / "inventory.yml", tmp_path,
                        REPO / "molecule" / "upgrade" / "vars.yml")
    finally:
        proc = subprocess.run([str(Path(sys.executable).parent / "molecule"), "destroy",
                               "--scenario-name", "upgrade"], cwd=REPO, env=_env(),
                              capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not any(leftovers("molecule-upgrade").values())


def _env() -> dict[str, str]:
    molecule = Path(sys.executable).parent / "molecule"
    return {**os.environ, "PATH": f"{molecule.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO), "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1",
            # molecule.yml: the roles are the collection vllama.provision, from this checkout.
            "VLLAMA_MOLECULE_COLLECTIONS": str(paths.collections_dir())}


def _molecule_test(scenario: str, steps: tuple[str, ...], destroy: bool = True) -> None:
    molecule = Path(sys.executable).parent / "molecule"
    if not molecule.exists():
        message = f"molecule is not installed next to {sys.executable} (pip install molecule)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes", "on"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    env = _env()
    # A run killed earlier (a timeout, a cancelled job) leaves the scenario's ephemeral state
    # behind, and molecule would take its lab for one that exists: start from none.
    subprocess.run([str(molecule), "reset", "--scenario-name", scenario], cwd=REPO, env=env,
                   capture_output=True, timeout=300, check=False)
    # Its own session, so a timeout stops molecule AND its ansible-playbook children; then the
    # lab is taken down (molecule's destroy never ran) before the test fails.
    proc = subprocess.Popen([str(molecule), "test", "--scenario-name", scenario,
                             *([] if destroy else ["--destroy", "never"])], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT[scenario])
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        subprocess.run([sys.executable, "-m", "vllama_provision.cli", "lab", "down", "--lab",
                        f"molecule-{scenario}"], cwd=REPO, env=env, check=False)
        pytest.fail(f"molecule test --scenario-name {scenario} took over {TIMEOUT[scenario]} s"
                    f"\n{output[-6000:]}", pytrace=False)
    assert proc.returncode == 0, output[-6000:]
    for step in steps:
        assert f"{step}: Executed: Successful" in output, output[-6000:]
    if destroy:
        assert not any(leftovers(f"molecule-{scenario}").values())
