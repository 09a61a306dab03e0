"""Shared test setup: the lab-host fixtures, and the lab test helpers importable by every tier."""

import sys
from pathlib import Path

# tests/lab/labtools.py (ansible/playbook runners, leftover checks) is used by the lab and
# molecule tiers.
sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
# tests/ itself, so every tier can reuse the e2e fixtures (``from e2e.conftest import ...``).
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = ["vllama_provision.lab.pytest_plugin"]
