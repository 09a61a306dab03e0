"""The controller's fact cache: what ``facts --save`` gathered, for ``plan`` and ``render``.

One JSON file per host under ``<state>/facts/<inventory key>/<host>.json`` (the key is a hash of
the inventory's absolute path, so two inventories with a host of the same name never share
facts). Files are validated on load with the one facts shape (vllama_provision.gpu).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from vllama_provision import gpu, paths


def cache_folder(inventory: Path) -> Path:
    key = hashlib.sha256(str(inventory.resolve()).encode()).hexdigest()[:16]
    return paths.state_dir() / "facts" / key


def save(inventory: Path, host: str, facts: dict) -> Path:
    folder = cache_folder(inventory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = folder / f"{host}.json"
    tmp = target.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"_inventory": str(inventory.resolve()), **facts}, indent=2,
                              sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


def load(inventory: Path, host: str) -> gpu.HostFacts | None:
    """Cached facts of a host, or None when there are none."""
    target = cache_folder(inventory) / f"{host}.json"
    if not target.is_file():
        return None
    return gpu.load_host_facts(target)
