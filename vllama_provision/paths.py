"""Where things live: the project's Ansible content, the cache and the controller's state."""

from __future__ import annotations

import os
from pathlib import Path

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


def roles_dir() -> Path:
    return data_root() / "roles"


def playbooks_dir() -> Path:
    return data_root() / "playbooks"


def templates_dir() -> Path:
    return data_root() / "templates"


def ansible_cfg() -> Path:
    return data_root() / "ansible.cfg"


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
