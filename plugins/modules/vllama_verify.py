#!/usr/bin/python
"""Verify OpenAI endpoints for real, from the host itself.

Per instance: wait until the engine is ready (each server has its own probe), check that
``/v1/models`` lists exactly the served name, that the endpoint refuses a request without the
key, and that one real streamed chat completion answers with text (its time to first token and
tokens per second are measured), or for an embedding instance (task embed) that
``/v1/embeddings`` returns a vector as long as the model's dimension (read from the model on the
host): the controller's verification contract (vllama_provision.verify), checked from the
host. The key is read from the instance's key file on the host and never returned.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_verify
short_description: Verify vllama-provision engine endpoints
description:
  - Verify OpenAI endpoints for real, from the host itself.
options:
  instances:
    description: Instances to verify (name, local_endpoint, served_name, readiness, key_file).
    type: list
    elements: dict
    required: true
  prompt:
    description: Prompt of the test completion.
    type: str
    default: What is the capital of France?
  timeout:
    description: Seconds each engine may take to become ready.
    type: int
    default: 600
  max_tokens:
    description:
      - Most tokens the one streamed test completion generates. The verification contract (the
        same from the controller) is 8, enough for a short answer and its speed.
    type: int
    default: 8
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Verify the endpoints.
  vllama.provision.vllama_verify:
    instances: "{{ _vllama_plan.instances }}"
"""

RETURN = r"""
instances:
  description:
    - Per instance verified, verified_from, ttft_ms, tokens_per_s, answer, error; embedding
      instances also give dimensions (their ttft_ms is the embedding's time).
  returned: always
  type: list
"""

import json
import time
import urllib.error

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import ConnectionError as UrlError
from ansible.module_utils.urls import open_url
from ansible_collections.vllama.provision.plugins.module_utils.vllama_gguf import (
    embedding_dimension,
)


class ProbeError(Exception):
    pass


def _request(url, key=None, body=None, timeout=30):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    return open_url(url, data=data, headers=headers, http_agent="vllama-provision",
                    method="POST" if body is not None else "GET", timeout=timeout)


def _status(url, key=None):
    try:
        with _request(url, key, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, UrlError, OSError):
        return None, b""


def wait_ready(base, readiness, key, timeout):
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        status, _body = _status(base + readiness["path"], key if readiness["auth"] else None)
        if status == readiness.get("expect_status", 200):
            return time.monotonic()
        last = f"HTTP {status}" if status else "connection refused"
        time.sleep(0.5)
    raise ProbeError(f"not ready after {timeout}s ({readiness['path']}: {last})")


def check_models(base, key, served):
    status, body = _status(base + "/v1/models", key)
    if status != 200:
        raise ProbeError(f"/v1/models answered HTTP {status}")
    ids = [m.get("id") for m in json.loads(body).get("data", [])]
    if ids != [served]:
        raise ProbeError(f"/v1/models lists {ids}, expected exactly ['{served}']")
    anonymous, _body = _status(base + "/v1/models")
    if anonymous not in (401, 403):
        raise ProbeError(f"/v1/models without the key answered HTTP {anonymous}, not 401")


UNKNOWN_MODEL = "vllama-verify-no-such-model"


def check_unknown_model(base, key, task="chat"):
    """A request for a model the endpoint does not serve must get 404 (not another model)."""
    if task == "embed":
        path, body = "/v1/embeddings", {"model": UNKNOWN_MODEL, "input": "hi"}
    else:
        path, body = "/v1/chat/completions", {"model": UNKNOWN_MODEL, "max_tokens": 1,
                                              "messages": [{"role": "user", "content": "hi"}]}
    try:
        with _request(base + path, key, body, timeout=60) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    if status != 404:
        raise ProbeError(f"a request for the unknown model '{UNKNOWN_MODEL}' answered HTTP "
                         f"{status}, expected 404")


def stream(base, key, served, prompt, max_tokens):
    """One streamed chat completion: (answer, time to first token in ms, tokens per second)."""
    body = {"model": served, "temperature": 0, "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": prompt}]}
    start = time.monotonic()
    first = None
    parts = []
    with _request(base + "/v1/chat/completions", key, body, timeout=300) as resp:
        for raw in resp:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            delta = (json.loads(payload).get("choices") or [{}])[0].get("delta") or {}
            if delta.get("content"):
                parts.append(delta["content"])
                if first is None:
                    first = time.monotonic()
    end = time.monotonic()
    answer = "".join(parts).strip()
    if first is None or not answer:
        raise ProbeError("the streamed chat completion returned no text")
    rate = (len(parts) - 1) / (end - first) if len(parts) > 1 and end > first else None
    return answer, round((first - start) * 1000, 1), (round(rate, 1) if rate else None)


def embed(base, key, served, prompt, dimension):
    """One real embedding: (a description of it, milliseconds). Its vector must be as long as
    the model's dimension (when the model tells it) and hold numbers only."""
    start = time.monotonic()
    with _request(base + "/v1/embeddings", key, {"model": served, "input": [prompt]},
                  timeout=300) as resp:
        data = json.loads(resp.read()).get("data") or []
    took = round((time.monotonic() - start) * 1000, 1)
    vector = data[0].get("embedding") if data and isinstance(data[0], dict) else None
    if not isinstance(vector, list) or not vector:
        raise ProbeError("/v1/embeddings returned no vector")
    if not all(isinstance(x, (int, float)) for x in vector):
        raise ProbeError("/v1/embeddings returned a vector that is not all numbers")
    if dimension and len(vector) != dimension:
        raise ProbeError(f"/v1/embeddings returned {len(vector)} dimensions; the model has "
                         f"{dimension}")
    return f"an embedding of {len(vector)} dimensions", took


def host_model_path(inst):
    """Where the instance's model is on this host (a container sees it under /models)."""
    path = inst["model_path"]
    if inst.get("deploy") == "container" and path.startswith("/models"):
        path = inst["paths"]["current"] + "/model" + path[len("/models"):]
    return path


def verify_one(inst, prompt, timeout, max_tokens):
    out = {"name": inst["name"], "verified": False, "verified_from": [], "ttft_ms": None,
           "tokens_per_s": None, "answer": None, "error": None}
    base = inst["local_endpoint"]
    try:
        with open(inst["paths"]["key_file"], encoding="utf-8") as handle:
            key = handle.read().strip()
    except OSError as exc:
        out["error"] = f"cannot read the API key file: {exc.strerror}"
        return out
    try:
        wait_ready(base, inst["readiness"], key, timeout)
        check_models(base, key, inst["served_name"])
        task = inst.get("task", "chat")
        if inst["readiness"].get("rejects_unknown_model"):
            check_unknown_model(base, key, task)
            out["unknown_model_rejected"] = True
        if task == "embed":
            dimension = embedding_dimension(host_model_path(inst)) or inst.get("embedding_dim")
            out["answer"], out["ttft_ms"] = embed(base, key, inst["served_name"], prompt,
                                                  dimension)
            out["dimensions"] = dimension or None
        else:
            out["answer"], out["ttft_ms"], out["tokens_per_s"] = stream(
                base, key, inst["served_name"], prompt, max_tokens)
        out["verified"] = True
        out["verified_from"] = ["host"]
    except ProbeError as exc:
        out["error"] = str(exc)
    except (urllib.error.URLError, UrlError, OSError, ValueError) as exc:
        out["error"] = f"request failed: {exc}"
    return out


def main():
    module = AnsibleModule(argument_spec={
        "instances": {"type": "list", "elements": "dict", "required": True},
        "prompt": {"type": "str", "default": "What is the capital of France?"},
        "timeout": {"type": "int", "default": 600},
        "max_tokens": {"type": "int", "default": 8, "no_log": False},
    }, supports_check_mode=True)
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, instances=[],
                         msg="verification does not run in check mode")
    p = module.params
    results = [verify_one(i, p["prompt"], p["timeout"], p["max_tokens"]) for i in p["instances"]]
    failed = [r for r in results if not r["verified"]]
    if failed:
        module.fail_json(msg="; ".join(f"{r['name']}: {r['error']}" for r in failed),
                         instances=results)
    module.exit_json(changed=False, instances=results)


if __name__ == "__main__":
    main()
