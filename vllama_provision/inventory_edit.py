"""Edit an inventory file in place, keeping its comments and layout (ruamel.yaml round trip).

Used by ``upgrade --write-inventory``: after a complete rollout, the new engine version becomes
the desired state of the instances that received it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML


def _instance_lists(node: Any, where: str) -> Iterator[tuple[list[Any], str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "vllama_instances" and isinstance(value, list):
                yield value, here
            else:
                yield from _instance_lists(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _instance_lists(value, f"{where}[{index}]")


def set_engine_version(path: Path, names: list[str], engine: str,
                       version: str) -> tuple[list[str], list[str]]:
    """Set ``engine_version`` on every instance called one of ``names`` whose engine is
    ``engine`` or left to the platform (auto). Returns (edited locations, names not found)."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    data = yaml.load(path.read_text(encoding="utf-8"))
    edited, found = [], set()
    for instances, where in _instance_lists(data, ""):
        for index, inst in enumerate(instances):
            if not isinstance(inst, dict) or inst.get("name") not in names:
                continue
            if inst.get("engine", "auto") not in ("auto", engine):
                continue
            found.add(inst["name"])
            if str(inst.get("engine_version", "")) != version:
                inst["engine_version"] = version
                edited.append(f"{path}: {where}[{index}] ({inst['name']})")
    if edited:
        out = io.StringIO()
        yaml.dump(data, out)
        tmp = path.with_name(f".{path.name}.vllama-edit")
        tmp.write_text(out.getvalue(), encoding="utf-8")
        os.replace(tmp, path)
    return edited, sorted(set(names) - found)
