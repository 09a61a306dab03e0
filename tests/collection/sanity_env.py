"""An offline-capable home for `ansible-test sanity --venv`, cached by its recipe.

ansible-test builds its virtual environments without pip and bootstraps pip with a get-pip script
it downloads from ci-files.testing.ansible.com (not reachable here), then pip-installs each sanity
test's pinned requirements. This module prepares, once per recipe (the ansible-test release,
its requirement files, this file), under the cache folder:

* ``wheels/``: every wheel those requirements need, and the pip release ansible-test bootstraps,
  downloaded once through pip's configured index (the mirror);
* ``home/.ansible/test/cache/get_pip_<version>.py``: a stand-in for the get-pip script that runs
  pip from that pip wheel (what get-pip itself does with the pip it embeds);

and runs ansible-test with HOME there and pip pointed at the wheels only (PIP_NO_INDEX), so its
per-test virtual environments are reused on later runs and nothing is fetched once it is warm.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ansible_test

from vllama_provision import paths

REQUIREMENTS = Path(ansible_test.__file__).parent / "_data" / "requirements"
PIP_VERSION = "24.2"  # ansible_test/_internal/python_requirements.py: get_venv_packages

GET_PIP = '''\
"""Stand-in for get-pip.py {version} (tests/collection/sanity_env.py): run pip from its wheel."""
import os
import sys

sys.path.insert(0, os.path.join({wheels!r}, "pip-{version}-py3-none-any.whl"))
from pip._internal.cli.main import main  # noqa: E402

# get-pip's own options (install no setuptools, no wheel) are what plain pip does anyway.
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--no-index", "--find-links", {wheels!r}, *args]))
'''


def _requirement_files() -> list[Path]:
    return sorted(REQUIREMENTS.glob("sanity.*.txt"))


def recipe_key() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in _requirement_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def prepare() -> Path:
    """The cache folder (wheels/, home/), made once per recipe."""
    version = ansible_test.__file__ and _ansible_version()
    folder = paths.cache_dir() / f"ansible-test-sanity-{version}-py311-{recipe_key()}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    wheels = folder / "wheels"
    wheels.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:", "-d", str(wheels)]
    subprocess.run([*pip, "--no-deps", f"pip=={PIP_VERSION}"], check=True, timeout=300)
    for req in _requirement_files():
        subprocess.run([*pip, "-r", str(req)], check=True, timeout=600)
    cache = folder / "home" / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True)
    (cache / f"get_pip_{PIP_VERSION.replace('.', '_')}.py").write_text(
        GET_PIP.format(version=PIP_VERSION, wheels=str(wheels)))
    (folder / ".complete").write_text(recipe_key() + "\n")
    return folder


def environment(folder: Path) -> dict[str, str]:
    """ansible-test's environment: HOME in the cache, pip limited to the cached wheels."""
    return {**os.environ, "HOME": str(folder / "home"), "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(folder / "wheels"), "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1"}


def _ansible_version() -> str:
    from ansible.release import __version__

    return __version__
