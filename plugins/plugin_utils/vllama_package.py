"""The one version rule of the controller plugins: vllama.provision X runs on vllama-provision X.

The collection's controller plugins (action, filter, lookup, callback) import the
``vllama_provision`` Python package, which must be installed next to ansible-core in exactly the
collection's version. Every plugin guards its import (``try``/``except ImportError``, so the
plugin still loads, as ansible-test's import test needs) and calls :func:`require_package`
before it does anything; that raises a clear error naming the pip command to run.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from ansible.errors import AnsibleError

COLLECTION = "vllama.provision"
PACKAGE = "vllama-provision"
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_checked = []


def collection_version(root=_ROOT):
    """This collection's version: MANIFEST.json of an installed collection, else galaxy.yml of
    the source tree (the CLI's own copy)."""
    manifest = os.path.join(root, "MANIFEST.json")
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as handle:
            return str(json.load(handle)["collection_info"]["version"])
    import yaml  # ansible-core's own dependency

    with open(os.path.join(root, "galaxy.yml"), encoding="utf-8") as handle:
        return str(yaml.safe_load(handle)["version"])


def package_problem(import_error=None, root=_ROOT):
    """Why this collection cannot run its controller plugins here, or None."""
    wanted = collection_version(root)
    pip = f"{sys.executable} -m pip install {PACKAGE}=={wanted}"
    package = None
    if import_error is None:
        try:
            package = importlib.import_module("vllama_provision")
        except ImportError as exc:
            import_error = exc
    if import_error is not None:
        return (f"the {COLLECTION} collection {wanted} needs the Python package {PACKAGE} "
                f"{wanted} in the Python that runs Ansible ({sys.executable}), which cannot "
                f"import it ({import_error}): {pip}")
    found = str(getattr(package, "__version__", "unknown"))
    if found != wanted:
        return (f"the {COLLECTION} collection {wanted} needs the Python package {PACKAGE} "
                f"exactly {wanted}; this Ansible's Python ({sys.executable}) has {found}: {pip}")
    return None


def require_package(import_error=None):
    """Raise AnsibleError unless vllama_provision of exactly this collection's version imports."""
    if _checked and import_error is None:
        return
    problem = package_problem(import_error)
    if problem:
        raise AnsibleError(problem)
    _checked.append(True)
