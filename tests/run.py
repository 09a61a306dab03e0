"""Run the test suite tier by tier, with a timing summary and one closing count line.

    python tests/run.py [--serial] [TIER...]

Each tier is a pytest run over tests/<tier>/ with the lab fixtures loaded. The quick tiers run
first, one after the other; then the long lab tiers run in two lanes side by side (each lane's
tiers in order, see LANES): they spend about half their time waiting on lab hosts, engines and
sockets, so two of them share the 2-core machine well. Lab hosts of different tiers never meet
(each lab has its own name and its own loopback block). A lane tier's output is written to
<logs>/<tier>.log and printed whole when the tier ends. ``--serial`` runs every tier one after
the other instead.

The llama.cpp engine wheel (about 10 minutes to compile on a cold machine) is built in the
background from the start, so the tiers that need it find it ready. A tier that collects no test
fails: nothing is counted as passing unless it ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIERS = ["static", "unit", "render", "collection", "lab", "molecule", "e2e", "upgrade", "gpu",
         "airgap", "gateway", "monitoring", "macos"]
# Budgets (seconds, cold) the issues give each tier; printed next to the measured time.
BUDGETS = {"static": 240, "unit": 180, "render": 180, "collection": 240, "lab": 180,
           "molecule": 240, "e2e": 660, "upgrade": 720, "gpu": 720, "airgap": 360,
           "gateway": 480, "monitoring": 240, "macos": 300}
SUITE_BUDGET = 3600  # the whole suite, cold
# Tiers that run side by side, one lane per list (balanced by their measured times, warm, in
# lanes: about 32 and 30 minutes side by side); every other tier runs before them, alone.
LANES = [["molecule", "e2e", "upgrade", "monitoring", "macos"], ["gpu", "airgap", "gateway"]]


@dataclass
class TierResult:
    name: str
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.errors == 0 and self.passed > 0


def _count(junit: Path) -> tuple[int, int, int, int]:
    if not junit.is_file():
        return 0, 0, 0, 0
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tests = failures = errors = skipped = 0
    for suite in suites:
        tests += int(suite.get("tests", 0))
        failures += int(suite.get("failures", 0))
        errors += int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return tests - failures - errors - skipped, failures, errors, skipped


def start_wheel_build(logs: Path) -> subprocess.Popen[bytes] | None:
    """Start compiling the engine wheel in the background (a no-op when it is cached)."""
    log = (logs / "wheel-build.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "vllama_provision.cli", "wheelhouse", "build"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def run_tier(name: str, logs: Path, captured: bool = False) -> TierResult:
    folder = ROOT / "tests" / name
    result = TierResult(name)
    if not folder.is_dir():
        result.errors = 1
        result.note = f"tests/{name} does not exist"
        return result
    junit = logs / f"{name}.xml"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", str(folder), f"--junitxml={junit}", "-q", "-rfEs",
           "--color=no", "--durations=8", "--durations-min=20"]
    start = time.monotonic()
    if captured:
        _say(f"\n=== tier {name}: started (output in {logs / (name + '.log')})")
        with (logs / f"{name}.log").open("w") as out:
            proc = subprocess.run(cmd, cwd=ROOT, check=False, stdout=out,
                                  stderr=subprocess.STDOUT)
        result.seconds = time.monotonic() - start
        _say(f"\n=== tier {name}: pytest tests/{name} ({result.seconds:.0f} s)\n"
             + (logs / f"{name}.log").read_text(errors="replace"))
    else:
        print(f"\n=== tier {name}: pytest tests/{name}", flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, check=False)
        result.seconds = time.monotonic() - start
    result.passed, result.failed, result.errors, result.skipped = _count(junit)
    if proc.returncode not in (0, 1) and result.failed == 0 and result.errors == 0:
        result.errors = 1
        result.note = f"pytest exited {proc.returncode}"
    if result.passed == 0 and not result.note:
        result.errors += 1
        result.note = "no test passed in this tier"
    return result


_PRINT = threading.Lock()


def _say(text: str) -> None:
    with _PRINT:
        print(text, flush=True)


def run_lanes(lanes: list[list[str]], logs: Path) -> tuple[dict[str, TierResult], list[float]]:
    """Run each lane's tiers in order, the lanes side by side; (results, each lane's seconds)."""
    results: dict[str, TierResult] = {}
    seconds = [0.0] * len(lanes)

    def lane(index: int) -> None:
        start = time.monotonic()
        for name in lanes[index]:
            results[name] = run_tier(name, logs, captured=True)
        seconds[index] = time.monotonic() - start

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(len(lanes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, seconds


def main(argv: list[str]) -> int:
    serial = "--serial" in argv
    argv = [a for a in argv if a != "--serial"]
    wanted = [t for t in TIERS if t in argv] if argv else TIERS
    unknown = [t for t in argv if t not in TIERS]
    if unknown:
        print(f"unknown tier(s): {', '.join(unknown)}; tiers: {', '.join(TIERS)}",
              file=sys.stderr)
        return 2
    logs = Path(os.environ.get("VLLAMA_TEST_LOGS", ROOT / ".test-logs"))
    logs.mkdir(parents=True, exist_ok=True)
    needs_wheel = {"e2e", "molecule", "upgrade", "gpu", "airgap", "macos"} & set(wanted)
    builder = start_wheel_build(logs) if needs_wheel else None
    started = time.monotonic()
    laned = {t for lane in LANES for t in lane} if not serial else set()
    done = {name: run_tier(name, logs) for name in wanted if name not in laned}
    lanes = [[t for t in lane if t in wanted] for lane in LANES if not serial]
    lanes = [lane for lane in lanes if lane]
    laned_results, lane_seconds = run_lanes(lanes, logs)
    done.update(laned_results)
    results = [done[name] for name in wanted]
    if builder is not None and builder.poll() is None:
        builder.terminate()
    total = time.monotonic() - started
    print("\n=== tier summary (seconds; budget cold)")
    for r in results:
        state = "ok" if r.ok else "FAILED"
        if r.seconds > BUDGETS[r.name]:
            state += ", OVER BUDGET"  # loud, not fatal: the machine's speed varies
            if r.name in laned:
                state += " (its budget is alone; it shared the machine with another lane)"
        print(f"  {r.name:<9} {r.seconds:7.1f}s / {BUDGETS[r.name]:>4}s  {r.passed:>4} passed "
              f"{r.failed:>3} failed {r.errors:>3} errors {r.skipped:>3} skipped  {state}"
              + (f"  ({r.note})" if r.note else ""))
    for lane, seconds in zip(lanes, lane_seconds, strict=True):
        print(f"  lane      {seconds:7.1f}s          {' -> '.join(lane)} (side by side)")
    over = ", OVER BUDGET" if total > SUITE_BUDGET else ""
    print(f"  total     {total:7.1f}s / {SUITE_BUDGET}s{over}")
    passed = sum(r.passed for r in results)
    failed = sum(r.failed + r.errors for r in results)
    skipped = sum(r.skipped for r in results)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
