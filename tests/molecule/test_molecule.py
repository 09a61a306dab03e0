"""`molecule test` on the default scenario: two real lab hosts, converged, idempotent, verified."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from labtools import leftovers

pytestmark = [pytest.mark.lab, pytest.mark.molecule]

REPO = Path(__file__).resolve().parents[2]


def test_molecule_default_scenario(lab_golden: Path) -> None:
    molecule = Path(sys.executable).parent / "molecule"
    if not molecule.exists():
        message = f"molecule is not installed next to {sys.executable} (pip install molecule)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes", "on"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    env = {**os.environ, "PATH": f"{molecule.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO), "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1"}
    proc = subprocess.run([str(molecule), "test", "--scenario-name", "default"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert f"{step}: Executed: Successful" in output, output[-6000:]
    assert not any(leftovers("molecule-default").values())
