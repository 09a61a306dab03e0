"""Where things live: the project's Ansible content, the cache and the controller's state."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

_PACKAGE = Path(__file__).resolve().parent


def data_root() -> Path:
    """The folder that holds roles/, playbooks/, templates/ and inventory/.

    An installed wheel carries them under ``vllama_provision/_data``; a source checkout (or an
    editable install) uses the repository root.
    """
    bundled = _PACKAGE / "_data"
    if (bundled / "roles").is_dir():
        return bundled
    return _PACKAGE.parent


def load_plugin_file(relative: str, name: str) -> ModuleType:
    """A standard-library-only file of the collection (``plugins/...``), loaded as a module so
    the package reuses the very code the hosts run (not imported through Ansible)."""
    spec = importlib.util.spec_from_file_location(name, data_root() / "plugins" / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def create_secret(path: Path, make: Callable[[], str]) -> None:
    """Write ``make()`` to ``path`` (0600, in a 0700 folder) unless it exists: a secret the
    controller generates once and keeps (concurrent runs never overwrite each other's)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(make())


def roles_dir() -> Path:
    return data_root() / "roles"


def playbooks_dir() -> Path:
    return data_root() / "playbooks"


def templates_dir() -> Path:
    return data_root() / "templates"


def ansible_cfg() -> Path:
    return data_root() / "ansible.cfg"


def collections_dir() -> Path:
    """A collections path whose ``ansible_collections/vllama/provision`` is :func:`data_root`.

    The roles and plugins are the Ansible collection ``vllama.provision``; the CLI runs them from
    its own copy (the checkout or the installed wheel's ``_data``) through a symlink kept under
    the cache folder, keyed by that copy's path (a temporary folder when the cache is read-only).
    """
    root = data_root()
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    for base in (cache_dir() / "collections", Path(tempfile.gettempdir()) / "vllama-collections"):
        folder = base / key
        link = folder / "ansible_collections" / "vllama" / "provision"
        try:
            if not (link.is_symlink() and Path(os.readlink(link)) == root):
                link.parent.mkdir(parents=True, exist_ok=True)
                tmp = link.with_name(f".provision-{os.getpid()}")
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(root, target_is_directory=True)
                os.replace(tmp, link)  # atomic: concurrent runs never see a missing link
            return folder
        except OSError:
            continue
    raise OSError(f"cannot create a collections folder for {root}")


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def cache_dir() -> Path:
    """One stable folder for everything expensive (golden images, wheels, converted models).

    Entries below it are keyed by their recipe, so a changed recipe builds a new entry.
    """
    env = os.environ.get("VLLAMA_CACHE_DIR")
    if env:
        return Path(env)
    if _is_root():
        return Path("/var/cache/vllama-provision")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vllama-provision"


def state_dir() -> Path:
    """The controller's own state: API key copies (0600), fact caches, labs, run artifacts."""
    env = os.environ.get("VLLAMA_STATE_DIR")
    if env:
        return Path(env)
    if _is_root():
        return Path("/var/lib/vllama-provision")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "vllama-provision"


def keys_dir() -> Path:
    """The controller's private API key copies, one folder per host (``<host>/<instance>.key``),
    written by the role and read by `verify`, `key show` and the tests; `lab down` removes a
    lab host's folder."""
    return state_dir() / "keys"


def key_path(host: str, instance: str) -> Path:
    """The controller's private copy of one instance's API key."""
    return keys_dir() / host / f"{instance}.key"
