"""`molecule test` on real lab hosts: the default scenario (two hosts, converged, idempotent,
verified) and the upgrade scenario (a failed upgrade rolled back, checked by its verify)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from e2e.conftest import engine_wheel
from labtools import leftovers
from wheels import ensure_relabelled

from vllama_provision import paths

pytestmark = [pytest.mark.lab, pytest.mark.molecule]

REPO = Path(__file__).resolve().parents[2]
# Seconds for `molecule test`. The upgrade scenario converges the real role (engine venv, model,
# verification), checks idempotence, prepares a second engine, fails the switch and verifies the
# rollback: 5-9 minutes on a shared 2-core machine at load 4-7, about twice that at load 13.
TIMEOUT = {"default": 900, "upgrade": 1500}


__all__ = ["engine_wheel"]


def test_molecule_default_scenario(lab_golden: Path) -> None:
    _molecule_test("default", ("create", "converge", "idempotence", "verify", "destroy"))


def test_molecule_upgrade_scenario(lab_golden: Path, engine_wheel: list[Path]) -> None:
    ensure_relabelled(engine_wheel[0])  # the new engine build the side effect rolls out
    _molecule_test("upgrade", ("create", "converge", "idempotence", "side_effect", "verify",
                               "destroy"))


def _molecule_test(scenario: str, steps: tuple[str, ...]) -> None:
    molecule = Path(sys.executable).parent / "molecule"
    if not molecule.exists():
        message = f"molecule is not installed next to {sys.executable} (pip install molecule)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes", "on"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    env = {**os.environ, "PATH": f"{molecule.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO), "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1",
           # molecule.yml: the roles are the collection vllama.provision, from this checkout.
           "VLLAMA_MOLECULE_COLLECTIONS": str(paths.collections_dir())}
    # Its own session, so a timeout stops molecule AND its ansible-playbook children; then the
    # lab is taken down (molecule's destroy never ran) before the test fails.
    proc = subprocess.Popen([str(molecule), "test", "--scenario-name", scenario], cwd=REPO,
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
    assert not any(leftovers(f"molecule-{scenario}").values())
