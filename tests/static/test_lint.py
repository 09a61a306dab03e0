"""Static checks: the code, the roles and the YAML are lint clean, and generated files are fresh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vllama_provision import paths
from vllama_provision.runner import ansible_env

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*cmd: str, ansible: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a tool from the venv; with ansible=True, in the environment the CLI gives Ansible."""
    # The roles call the collection's modules and plugins by FQCN: ansible-lint resolves them in
    # the CLI's collections path (--offline installs nothing).
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "NO_COLOR": "1", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_COLLECTIONS_PATH": str(paths.collections_dir())}
    # vllama_provision.inventory sets this for its own in-process parsing; ansible-lint's
    # inventory-less syntax checks must not inherit it.
    env.pop("ANSIBLE_INVENTORY_UNPARSED_FAILED", None)
    if ansible:
        env.update(ansible_env())
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False,
                          timeout=600)


def test_ruff_is_clean() -> None:
    proc = _run(str(BIN / "ruff"), "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_is_clean_in_strict_mode() -> None:
    proc = _run(str(BIN / "yamllint"), "-s", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile_passes() -> None:
    proc = _run(str(BIN / "ansible-lint"), "--offline", "--format=pep8", "--nocolor", "roles",
                "playbooks")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_generated_role_files_match_the_schema() -> None:
    proc = _run(sys.executable, "-m", "vllama_provision.cli", "schema", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_playbooks_pass_ansible_syntax_check() -> None:
    for playbook in sorted((ROOT / "playbooks").glob("*.yml")):
        proc = _run(str(BIN / "ansible-playbook"), "--syntax-check", "-i",
                    str(ROOT / "inventory/local.yml"), str(playbook), ansible=True)
        assert proc.returncode == 0, f"{playbook.name}: {proc.stdout}{proc.stderr}"
