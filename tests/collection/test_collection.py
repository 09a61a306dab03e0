"""The repository as the Ansible collection vllama.provision: the tarball `ansible-galaxy
collection build` makes (what it holds and leaves out), installed under a temporary
ansible_collections/vllama/provision, `ansible-test sanity --venv` on it, and one version for the
collection and the Python package."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import sanity_env  # this folder (pytest puts a test's folder on sys.path)
import yaml
from ansible.release import __version__ as ANSIBLE_CORE
from packaging.specifiers import SpecifierSet

import vllama_provision
from vllama_provision import paths

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text())
VERSION = str(GALAXY["version"])


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    proc = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / f"vllama-provision-{VERSION}.tar.gz"


@pytest.fixture(scope="module")
def installed(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built collection installed where ansible-test needs it."""
    root = tmp_path_factory.mktemp("collections")
    proc = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "-p", str(root),
                           str(tarball)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "ansible_collections" / "vllama" / "provision"


def test_the_tarball_holds_the_collection_and_nothing_of_the_development(tarball: Path) -> None:
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"MANIFEST.json", "FILES.json", "README.md", "CHANGELOG.md", "meta", "roles",
                    "plugins", "playbooks", "templates", "tests"}, tops
    for role in ("vllama", "vllama_base", "vllama_facts", "vllama_nvidia_driver",
                 "vllama_nvidia_container_toolkit"):
        assert f"roles/{role}/tasks/main.yml" in names
    for part in ("modules/vllama_release.py", "modules/vllama_validate.py",
                 "action/vllama_plan.py", "filter/vllama.py", "lookup/vllama_state_dir.py",
                 "callback/vllama_watchdog.py", "module_utils/vllama_pynvml.py",
                 "plugin_utils/vllama_package.py"):
        assert f"plugins/{part}" in names, part
    assert {"meta/runtime.yml", "meta/execution-environment.yml", "meta/ee-requirements.txt",
            "templates/systemd/vllama-engine.service.j2", "playbooks/site.yml"} <= names
    # tests/ carries only what ansible-test reads (tests/sanity); no caches, no package sources.
    assert {n for n in names if n.startswith("tests/")} <= {"tests/sanity",
                                                          "tests/sanity/ignore-2.19.txt"}
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".tar.gz"))]
    assert not [n for n in names if n.startswith(("vllama_provision", "benchmarks", "molecule",
                                                  "scripts", ".venv", "inventory", ".",
                                                  "pyproject.toml", "ansible.cfg"))]


def test_one_version_for_the_collection_and_the_package() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(VERSION)}"$', pyproject, re.MULTILINE), \
        "galaxy.yml and pyproject.toml disagree on the version"
    assert vllama_provision.__version__ == VERSION
    ee = yaml.safe_load((ROOT / "meta/execution-environment.yml").read_text())
    pins = [line for line in (ROOT / ee["dependencies"]["python"]).read_text().splitlines()
            if line and not line.startswith("#")]
    assert pins == [f"vllama-provision=={VERSION}"]
    runtime = yaml.safe_load((ROOT / "meta/runtime.yml").read_text())
    assert ANSIBLE_CORE in SpecifierSet(runtime["requires_ansible"])
    assert "ansible-core>=2.19,<2.20" in pyproject


def test_a_plugin_refuses_another_package_version_naming_the_pip_command(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "plugins" / "plugin_utils"))
    try:
        import vllama_package
    finally:
        sys.path.pop(0)
    assert vllama_package.package_problem(root=str(ROOT)) is None
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"collection_info": {"version": "9.9.9"}}))
    problem = vllama_package.package_problem(root=str(tmp_path))
    assert f"has {VERSION}" in problem
    assert problem.endswith("-m pip install vllama-provision==9.9.9")
    problem = vllama_package.package_problem(ImportError("No module named 'vllama_provision'"),
                                             root=str(tmp_path))
    assert "cannot import it" in problem and "pip install vllama-provision==9.9.9" in problem


def test_ansible_test_sanity_passes_on_the_installed_collection(installed: Path) -> None:
    folder = sanity_env.prepare()
    proc = subprocess.run([str(BIN / "ansible-test"), "sanity", "--venv", "--python", "3.11",
                           "--color", "no"], cwd=installed, env=sanity_env.environment(folder),
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-8000:]


def test_sanity_ignores_are_only_ones_ansible_lint_allows() -> None:
    ignores = ROOT / "tests" / "sanity" / "ignore-2.19.txt"
    if not ignores.exists():
        return  # nothing ignored at all
    proc = subprocess.run([str(BIN / "ansible-lint"), "--offline", "--nocolor", "-p",
                           str(ignores)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False, env={"ANSIBLE_COLLECTIONS_PATH":
                                            str(paths.collections_dir()), **_path_env()})
    assert proc.returncode == 0 and "sanity[" not in proc.stdout, proc.stdout + proc.stderr


def _path_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "ANSIBLE_INVENTORY_UNPARSED_FAILED"}
