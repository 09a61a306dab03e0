"""`molecule test` on real lab hosts: the default scenario (two hosts, converged, idempotent,
verified) and the upgrade scenario (a failed upgrade rolled back, checked by its verify)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e.conftest import engine_wheel
from labtools import leftovers
from wheels import ensure_relabelled

pytestmark = [pytest.mark.lab, pytest.mark.molecule]

REPO = Path(__file__).resolve().parents[2]


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
           "PYTHONPATH": str(REPO), "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1"}
    proc = subprocess.run([str(molecule), "test", "--scenario-name", scenario], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    for step in steps:
        assert f"{step}: Executed: Successful" in output, output[-6000:]
    assert not any(leftovers(f"molecule-{scenario}").values())
