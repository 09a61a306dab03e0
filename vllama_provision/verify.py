"""Verification from the controller: every reachable instance of the fleet at once.

The verification contract, the same on the host (the role's ``vllama_verify``) and here:

1. the engine is ready (each server has its own probe: ``/health`` for vLLM and llama.cpp's
   server, ``/v1/models`` with the key for llama-cpp-python);
2. ``/v1/models`` with the key lists exactly the served name, and without the key answers 401;
3. where the server rejects unknown models (vLLM), a request for another model gets 404;
4. one real streamed chat completion of at most ``MAX_TOKENS`` tokens at temperature 0 answers
   with text; its time to first token and tokens per second are measured. An embedding
   instance (``task: embed``) instead answers one ``/v1/embeddings`` request with a vector of
   numbers as long as the model's dimension (its unknown-model probe asks that route too).

Here all instances are checked concurrently (httpx's async client), each with the controller's
private copy of its key; the model list is asked once per instance (it doubles as the readiness
probe where the server's probe is that list). An instance this machine cannot reach (an engine
bound to the host's loopback, an isolated host) or whose key copy is missing is reported as not
reachable, so the caller can verify it on its host instead.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from vllama_provision.paths import key_path
from vllama_provision.report import Report

# Part of the verification contract: the completion is short (the answer proves the model
# generates; its speed is measured over these tokens) and the same everywhere: the role's
# vllama_verify module streams the same completion on the host (its max_tokens default).
MAX_TOKENS = 8
UNKNOWN_MODEL = "vllama-verify-no-such-model"
# The gateway names the instance that answered a request in this header (its upstream id).
INSTANCE_HEADER = "x-vllama-instance"
READY_TIMEOUT = 30.0  # an engine `verify` finds starting gets this long to become ready
REQUEST_TIMEOUT = 120.0


@dataclass
class ControllerCheck:
    reachable: bool
    verified: bool
    detail: str
    answer: str | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None


class _Failed(Exception):
    pass


def read_key(host: str, instance: str) -> str | None:
    try:
        return key_path(host, instance).read_text(encoding="utf-8").strip()
    except OSError:
        return None


async def _ready(client: httpx.AsyncClient, base: str, readiness: dict[str, Any],
                 headers: dict[str, str], timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    path = readiness.get("path", "/health")
    while True:
        try:
            reply = await client.get(base + path,
                                     headers=headers if readiness.get("auth") else {})
            if reply.status_code == readiness.get("expect_status", 200):
                return reply
            last = f"HTTP {reply.status_code}"
        except httpx.ConnectError:
            raise
        except httpx.TransportError as exc:
            last = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            raise _Failed(f"not ready after {timeout:.0f}s ({path}: {last})")
        await asyncio.sleep(0.5)


async def _models(client: httpx.AsyncClient, base: str, headers: dict[str, str],
                  served: str, listed: httpx.Response | None) -> None:
    reply = listed or await client.get(f"{base}/v1/models", headers=headers)
    if reply.status_code != 200:
        raise _Failed(f"/v1/models answered {reply.status_code}")
    ids = [m.get("id") for m in reply.json().get("data", [])]
    if ids != [served]:
        raise _Failed(f"/v1/models lists {ids}, expected exactly {[served]}")
    anonymous = await client.get(f"{base}/v1/models")
    if anonymous.status_code not in (401, 403):
        raise _Failed(f"/v1/models without the key answered {anonymous.status_code}, not 401")


async def _unknown_model(client: httpx.AsyncClient, base: str,
                         headers: dict[str, str], task: str = "chat") -> None:
    if task == "embed":
        reply = await client.post(f"{base}/v1/embeddings", headers=headers,
                                  json={"model": UNKNOWN_MODEL, "input": "hi"})
    else:
        reply = await client.post(f"{base}/v1/chat/completions", headers=headers, json={
            "model": UNKNOWN_MODEL, "max_tokens": 1,
            "messages": [{"role": "user", "content": "hi"}]})
    if reply.status_code != 404:
        raise _Failed(f"a request for the unknown model '{UNKNOWN_MODEL}' answered "
                      f"{reply.status_code}, expected 404")


async def _stream(client: httpx.AsyncClient, base: str, headers: dict[str, str], served: str,
                  prompt: str, answered_by: list[str] | None = None
                  ) -> tuple[str, float, float | None]:
    body = {"model": served, "temperature": 0, "max_tokens": MAX_TOKENS, "stream": True,
            "messages": [{"role": "user", "content": prompt}]}
    start = time.monotonic()
    first: float | None = None
    parts: list[str] = []
    async with client.stream("POST", f"{base}/v1/chat/completions", headers=headers,
                             json=body, timeout=REQUEST_TIMEOUT) as reply:
        if reply.status_code != 200:
            raise _Failed(f"the streamed chat completion answered {reply.status_code}")
        if answered_by is not None:
            answered_by.append(reply.headers.get(INSTANCE_HEADER, ""))
        async for line in reply.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            delta = (json.loads(payload).get("choices") or [{}])[0].get("delta") or {}
            if delta.get("content"):
                parts.append(delta["content"])
                first = first or time.monotonic()
    end = time.monotonic()
    answer = "".join(parts).strip()
    if first is None or not answer:
        raise _Failed("the streamed chat completion returned no text")
    rate = (len(parts) - 1) / (end - first) if len(parts) > 1 and end > first else None
    return answer, round((first - start) * 1000, 1), (round(rate, 1) if rate else None)


async def _embed(client: httpx.AsyncClient, base: str, headers: dict[str, str], served: str,
                 prompt: str, dimension: int, answered_by: list[str] | None = None
                 ) -> tuple[str, float]:
    """One real embedding: (a description of it, milliseconds); the vector must hold numbers
    only and, when the model's dimension is known, be that long."""
    start = time.monotonic()
    reply = await client.post(f"{base}/v1/embeddings", headers=headers,
                              json={"model": served, "input": [prompt]}, timeout=REQUEST_TIMEOUT)
    took = round((time.monotonic() - start) * 1000, 1)
    if reply.status_code != 200:
        raise _Failed(f"/v1/embeddings answered {reply.status_code}")
    if answered_by is not None:
        answered_by.append(reply.headers.get(INSTANCE_HEADER, ""))
    data = reply.json().get("data") or []
    vector = data[0].get("embedding") if data and isinstance(data[0], dict) else None
    if not isinstance(vector, list) or not vector:
        raise _Failed("/v1/embeddings returned no vector")
    if not all(isinstance(x, int | float) for x in vector):
        raise _Failed("/v1/embeddings returned a vector that is not all numbers")
    if dimension and len(vector) != dimension:
        raise _Failed(f"/v1/embeddings returned {len(vector)} dimensions; the model has "
                      f"{dimension}")
    return f"an embedding of {len(vector)} dimensions", took


async def _check(client: httpx.AsyncClient, host: str, inst: dict[str, Any], prompt: str,
                 ready_timeout: float) -> ControllerCheck:
    key = read_key(host, inst["name"])
    if key is None:
        return ControllerCheck(False, False, "no controller copy of the API key")
    base = inst["endpoint"]
    headers = {"Authorization": f"Bearer {key}"}
    readiness = inst.get("readiness") or {"path": "/health", "auth": False}
    try:
        ready = await _ready(client, base, readiness, headers, ready_timeout)
        listed = ready if readiness.get("path") == "/v1/models" and readiness.get("auth") \
            else None
        await _models(client, base, headers, inst["served_name"], listed)
        task = inst.get("task", "chat")
        if readiness.get("rejects_unknown_model"):
            await _unknown_model(client, base, headers, task)
        if task == "embed":
            answer, ttft = await _embed(client, base, headers, inst["served_name"], prompt,
                                        int(inst.get("embedding_dim") or 0))
            rate = None
        else:
            answer, ttft, rate = await _stream(client, base, headers, inst["served_name"],
                                               prompt)
    except httpx.ConnectError as exc:
        return ControllerCheck(False, False, f"not reachable from the controller ({exc})")
    except httpx.TransportError as exc:
        return ControllerCheck(True, False, f"request failed: {exc or type(exc).__name__}")
    except _Failed as exc:
        return ControllerCheck(True, False, str(exc))
    except (ValueError, KeyError, IndexError) as exc:
        return ControllerCheck(True, False, f"unexpected answer ({exc})")
    took = "embedded in" if inst.get("task") == "embed" else "answered, first token after"
    return ControllerCheck(True, True, f"{took} {ttft:.0f} ms", answer, ttft, rate)


def verify_all(targets: Iterable[tuple[str, dict[str, Any], str]],
               ready_timeout: float = READY_TIMEOUT) -> dict[tuple[str, str], ControllerCheck]:
    """Check every (host, instance plan, prompt) at once; results keyed by (host, instance)."""
    todo = list(targets)

    async def run() -> list[ControllerCheck]:
        limits = httpx.Limits(max_connections=max(10, 3 * len(todo)))
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=REQUEST_TIMEOUT),
                                     limits=limits) as client:
            return list(await asyncio.gather(*(_check(client, host, inst, prompt,
                                                      ready_timeout)
                                               for host, inst, prompt in todo)))

    results = asyncio.run(run()) if todo else []
    return {(host, inst["name"]): check
            for (host, inst, _prompt), check in zip(todo, results, strict=True)}


@dataclass
class GatewayCheck:
    """One model asked through one gateway."""

    model: str
    verified: bool
    detail: str
    answered_by: str = ""  # HOST/INSTANCE
    answer: str | None = None
    ttft_ms: float | None = None


async def _through_gateway(client: httpx.AsyncClient, plan: Any, key: str, prompt: str
                           ) -> list[GatewayCheck]:
    """Each model with instances, asked through the gateway ``plan`` (a GatewayPlan): it lists
    the model, refuses a request without a key (401), and one of the model's instances answers
    the verification's streamed completion, or its embedding (the gateway names it)."""
    base, headers = plan.endpoint, {"Authorization": f"Bearer {key}"}
    names = {u.id: f"{u.host}/{u.instance}" for u in plan.upstreams}
    models = [m for m in plan.models if m.upstreams]
    try:
        denied = await client.get(f"{base}/v1/models")
        listed = await client.get(f"{base}/v1/models", headers=headers)
    except httpx.TransportError as exc:
        return [GatewayCheck(m.name, False, f"the gateway does not answer ({exc})")
                for m in models]
    served = {m.get("id") for m in (listed.json().get("data") or [])} \
        if listed.status_code == 200 else set()

    async def one(model: Any) -> GatewayCheck:
        if denied.status_code != 401:
            return GatewayCheck(model.name, False, f"/v1/models without a key answered "
                                f"{denied.status_code}, expected 401")
        if model.name not in served:
            return GatewayCheck(model.name, False, "the gateway does not list it (no instance "
                                "up and in service)")
        answered: list[str] = []
        try:
            if model.task == "embed":
                answer, ttft = await _embed(client, base, headers, model.name, prompt,
                                            model.embedding_dim, answered)
            else:
                answer, ttft, _rate = await _stream(client, base, headers, model.name, prompt,
                                                    answered)
        except (httpx.TransportError, _Failed, ValueError, KeyError, IndexError) as exc:
            return GatewayCheck(model.name, False, str(exc) or type(exc).__name__)
        who = names.get(answered[0] if answered else "", "")
        return GatewayCheck(model.name, True, f"answered by {who or 'an unknown instance'}",
                            who, answer, ttft)

    return list(await asyncio.gather(*(one(m) for m in models)))


def verify_gateways(plans: dict[str, Any], prompts: dict[str, str]
                    ) -> dict[str, list[GatewayCheck]]:
    """Every model through every gateway (GATEWAY HOST -> its GatewayPlan), each gateway with
    its host's verification prompt."""
    from vllama_provision.gateway import gateway_key_path

    async def one(host: str, plan: Any) -> list[GatewayCheck]:
        first = plan.keys[0] if plan.keys else None
        path = Path(first["copy"]) if first else Path(gateway_key_path("default"))
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError:
            return [GatewayCheck(m.name, False, f"no copy of the client key {path.stem!r} on "
                                 "this controller") for m in plan.models if m.upstreams]
        # A TLS listener is checked against the system's CAs and its own certificate (which
        # may be self-signed).
        trust: Any = True
        if plan.tls:
            trust = ssl.create_default_context()
            trust.load_verify_locations(plan.tls_cert_file)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=REQUEST_TIMEOUT),
                                     verify=trust) as client:
            return await _through_gateway(client, plan, key, prompts[host])

    async def run() -> dict[str, list[GatewayCheck]]:
        found = await asyncio.gather(*(one(host, plan) for host, plan in plans.items()))
        return dict(zip(plans, found, strict=True))

    return asyncio.run(run()) if plans else {}


def _dimension_known(inst: Any) -> bool:
    """An embedding instance is verified here only when this controller knows its model's
    dimension (it holds the model); its host reads the dimension from its own copy."""
    return inst.task != "embed" or inst.embedding_dim > 0


def verify_from_controller(host: str, instance: dict[str, Any], prompt: str,
                           ready_timeout: float = READY_TIMEOUT) -> ControllerCheck:
    """One instance (see verify_all)."""
    return verify_all([(host, instance, prompt)], ready_timeout)[(host, instance["name"])]


def verify_fleet(inventory: Path, limit: str | None, *, verbose: int = 0) -> Report:
    """`vllama-provision verify`: every instance the controller can reach is verified from here,
    all at once, without Ansible; a host is verified on itself (the role's verify play) when one
    of its instances cannot be reached from here or has no key copy, when its platform is known
    only from facts this controller has not cached, and on NVIDIA hosts (whose GPU health only
    the host can check)."""
    from dataclasses import asdict

    from vllama_provision import facts as fact_cache
    from vllama_provision.gateway import plan_inventory_gateways
    from vllama_provision.inventory import load_inventory
    from vllama_provision.planner import plan_host
    from vllama_provision.runner import Progress, RunRequest, run_playbook

    inv = load_inventory(inventory, limit)  # bad input never reaches a host
    hosts = list(inv)
    plans = {h.name: plan_host(h, fact_cache.load(inventory, h.name)) for h in hosts}
    gateways = {name: plan for name, plan in plan_inventory_gateways(inv).items()
                if name in plans}
    on_host = {name for name, plan in plans.items()
               if plan.platform in (None, "linux-nvidia") or plan.refused
               or any(not _dimension_known(inst) for inst in plan.instances)}
    targets = [(name, asdict(inst), plan.verify_prompt) for name, plan in plans.items()
               if name not in on_host for inst in plan.instances]
    checks = verify_all(targets)
    on_host |= {host for (host, _name), check in checks.items() if not check.reachable}

    report = Report(command="verify")
    for name, plan in plans.items():
        if name in on_host:
            continue
        entry = report.host(name)
        entry.add_planned(plan.instances)
        problems = []
        for inst in plan.instances:
            check = checks[(name, inst.name)]
            item = entry.instance(inst.name)
            item.verified = check.verified
            if check.verified:
                item.verified_from = ["controller"]
                item.answer, item.ttft_ms, item.tokens_per_s = (check.answer, check.ttft_ms,
                                                                check.tokens_per_s)
            else:
                problems.append(f"{inst.name}: {check.detail}")
        if problems:
            entry.status, entry.error = "failed", "; ".join(problems)
            entry.failed_task = "Verify every endpoint from the controller."
    if on_host:
        played = run_playbook(RunRequest(playbook="verify.yml", inventory=inventory,
                                         command="verify", verbosity=verbose,
                                         limit=",".join(n for n in plans if n in on_host)),
                              progress=Progress())
        for name, entry in played.report.hosts.items():
            report.hosts[name] = entry
    # Then each model through each gateway: which instance answered it.
    prompts = {name: plans[name].verify_prompt for name in gateways}
    for gateway, found in verify_gateways(gateways, prompts).items():
        entry = report.host(gateway)
        entry.extra["gateway"] = {c.model: {"verified": c.verified, "detail": c.detail,
                                            "answered_by": c.answered_by, "answer": c.answer,
                                            "ttft_ms": c.ttft_ms} for c in found}
        failed = [f"gateway: {c.model}: {c.detail}" for c in found if not c.verified]
        if failed:
            entry.status = "failed"
            entry.error = "; ".join([entry.error] * bool(entry.error) + failed)
            entry.failed_task = entry.failed_task or "Verify every model through the gateway."
        for check in found:
            host, _, name = check.answered_by.partition("/")
            if check.verified and host in report.hosts:
                for item in report.hosts[host].instances:
                    if item.name == name and "gateway" not in item.verified_from:
                        item.verified_from.append("gateway")
    report.hosts = dict(sorted(report.hosts.items()))
    return report


def reachable_endpoints(inventory: Path, limit: str | None,
                        timeout: float = 1.0) -> dict[str, list[str]]:
    """HOST -> the instances whose endpoint (as planned offline) accepts a TCP connection from
    here and whose key copy this controller holds: the ones it verifies itself after a run in
    which their host changed nothing (the role verifies the others on the host)."""
    from vllama_provision import facts as fact_cache
    from vllama_provision.inventory import load_inventory
    from vllama_provision.planner import plan_host

    targets: list[tuple[str, str, str, int]] = []
    for host in load_inventory(inventory, limit):
        plan = plan_host(host, fact_cache.load(inventory, host.name))
        for inst in plan.instances:
            url = httpx.URL(inst.endpoint)
            if url.host and url.port and read_key(host.name, inst.name) is not None \
                    and _dimension_known(inst):
                targets.append((host.name, inst.name, url.host, url.port))

    async def probe(address: str, port: int) -> bool:
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port),
                                                     timeout)
        except (TimeoutError, OSError):
            return False
        writer.close()
        return True

    async def run() -> list[bool]:
        return list(await asyncio.gather(*(probe(a, p) for _h, _n, a, p in targets)))

    found: dict[str, list[str]] = {}
    for (host, name, _address, _port), ok in zip(targets, asyncio.run(run()) if targets else [],
                                                 strict=True):
        if ok:
            found.setdefault(host, []).append(name)
    return found
