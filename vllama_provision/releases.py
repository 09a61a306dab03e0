"""Releases seen from the controller: engine version order, downgrades, rollout batches.

A release is one instance's complete desired state on a host (engine build, model, flags); the
host keeps several, ``current`` serves, ``previous`` is the rollback target. This module holds
the decisions about them that need no host: whether a planned release downgrades an engine,
and how a rollout splits hosts into batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from packaging.version import InvalidVersion, Version

from vllama_provision.errors import UsageError


def newer(a: str, b: str) -> bool:
    """Whether engine version ``a`` is newer than ``b`` (PEP 440; local labels count)."""
    try:
        return Version(a) > Version(b)
    except InvalidVersion:
        return False


def downgrades(instances: Sequence[Mapping[str, Any]],
               releases: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One message per planned instance whose engine is older than the one it serves now."""
    found = []
    for inst in instances:
        state = releases.get(inst["name"]) or {}
        current = next((r for r in state.get("releases") or []
                        if r.get("id") == state.get("current")), None)
        if not current or current.get("engine") != inst["engine"]:
            continue
        running, wanted = str(current.get("engine_version") or ""), str(inst["engine_version"])
        if running and newer(running, wanted):
            found.append(f"{inst['name']}: runs {inst['engine']} {running}, the inventory asks "
                         f"for {wanted}")
    return found


def parse_batch(text: str | None) -> tuple[int, bool]:
    """``N`` hosts or ``N%`` of the hosts per batch: (number, is_percent)."""
    if text is None or text == "":
        return 1, False
    raw = text.strip()
    percent = raw.endswith("%")
    number = raw[:-1] if percent else raw
    if not number.isdigit() or int(number) < 1 or (percent and int(number) > 100):
        raise UsageError(f"--batch {text!r}: expected a number of hosts (1, 2, ...) or a "
                         "percentage of them (1% to 100%)")
    return int(number), percent


def batches(hosts: Sequence[str], batch: str | None) -> list[list[str]]:
    """Split hosts (in inventory order) into consecutive batches."""
    number, percent = parse_batch(batch)
    size = max(1, math.ceil(len(hosts) * number / 100)) if percent else number
    return [list(hosts[i:i + size]) for i in range(0, len(hosts), size)]
