"""Verification from the controller, when an endpoint is reachable from here.

The role verifies every endpoint on its host (the only place that can always reach a
loopback-bound or isolated engine); this module repeats the check from the controller with
httpx, with the controller's private copy of the key, and says plainly when it could not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from vllama_provision import paths


@dataclass
class ControllerCheck:
    reachable: bool
    verified: bool
    detail: str
    answer: str | None = None


def key_path(host: str, instance: str) -> Path:
    return paths.keys_dir() / host / f"{instance}.key"


def read_key(host: str, instance: str) -> str | None:
    try:
        return key_path(host, instance).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def verify_from_controller(host: str, instance: dict[str, Any], prompt: str,
                           timeout: float = 10.0) -> ControllerCheck:
    """Check /v1/models and one chat completion against the endpoint the inventory names."""
    key = read_key(host, instance["name"])
    if key is None:
        return ControllerCheck(False, False, "no controller copy of the API key")
    base = instance["endpoint"]
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(timeout=timeout) as client:
            models = client.get(f"{base}/v1/models", headers=headers)
            if models.status_code != 200:
                return ControllerCheck(True, False, f"/v1/models answered {models.status_code}")
            ids = [m.get("id") for m in models.json().get("data", [])]
            if ids != [instance["served_name"]]:
                return ControllerCheck(True, False, f"/v1/models lists {ids}")
            start = time.monotonic()
            reply = client.post(f"{base}/v1/chat/completions", headers=headers, timeout=120,
                                json={"model": instance["served_name"], "temperature": 0,
                                      "max_tokens": 32,
                                      "messages": [{"role": "user", "content": prompt}]})
            if reply.status_code != 200:
                return ControllerCheck(True, False, f"chat completion answered "
                                                    f"{reply.status_code}")
            answer = reply.json()["choices"][0]["message"]["content"].strip()
            took = (time.monotonic() - start) * 1000
            return ControllerCheck(True, bool(answer), f"answered in {took:.0f} ms", answer)
    except httpx.TransportError as exc:
        return ControllerCheck(False, False, f"not reachable from the controller ({exc})")
    except (ValueError, KeyError, IndexError) as exc:
        return ControllerCheck(True, False, f"unexpected answer ({exc})")
