"""The controller's fact cache: what ``facts --save`` gathered, for ``plan`` and ``render``.

One JSON file per host under ``<state>/facts/<inventory key>/<host>.json`` (the key is a hash of
the inventory's absolute path, so two inventories with a host of the same name never share
facts). Files are validated on load with the one facts shape (vllama_provision.gpu).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def from_hostvars(hostvars: Any) -> Callable[[Any], gpu.HostFacts | None]:
    """For the fleet-level action plugins (gateway, monitoring): a host's facts as this run
    gathered them when the host took part in it, else the controller's cache for its
    inventory file."""
    from vllama_provision.inventory import to_plain

    def facts_for(spec: Any) -> gpu.HostFacts | None:
        live = to_plain(hostvars[spec.name].get("vllama_facts") or None)
        if live and not gpu.validate_host_facts(live):
            return live
        source = hostvars[spec.name].get("inventory_file")
        return load(Path(source), spec.name) if source else None

    return facts_for


# ------------------------------------------------------------------ facts a run saw ---
# Apart from ``facts --save``'s cache (which `plan` and `render` read): the facts each host had
# in the last run that gathered them, under ``<state>/facts-seen/<inventory key>/<host>.json``.
# The converged check before the play (the vllama_converged action) plans from them and sends
# their digest: the host compares it with its own facts in the same round trip, so a host whose
# facts did not change is compared with its desired state in one round trip.


def seen_folder(inventory: Path) -> Path:
    key = hashlib.sha256(str(inventory.resolve()).encode()).hexdigest()[:16]
    return paths.state_dir() / "facts-seen" / key


def save_seen(inventory: Path, host: str, facts: dict) -> None:
    """Remember the facts ``host`` had in a run (0600 in a 0700 folder; written atomically)."""
    if gpu.validate_host_facts(facts):
        return
    folder = seen_folder(inventory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = folder / f"{host}.json"
    tmp = target.with_name(f".{host}.json.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(facts, handle, sort_keys=True)
    tmp.replace(target)


def load_seen(inventory: Path, host: str) -> dict | None:
    """The facts ``host`` had in the last run that gathered them, or None (none, unreadable or
    malformed)."""
    try:
        data = json.loads((seen_folder(inventory) / f"{host}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or gpu.validate_host_facts(data):
        return None
    return data
