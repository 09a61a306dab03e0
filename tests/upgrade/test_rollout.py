"""Fleet-wide engine upgrades on three real lab hosts, with faults.

The engine builds are the real llama-cpp-python wheel (OLD) and the same wheel relabelled as
``0.3.36+vllamatest1`` (NEW; see conftest.py). Faults are injected on ONE host, into that
host's prepared NEW engine environment, so the new release really cannot start or really
serves the wrong model name; nothing in the tool is mocked.

The tests share one fleet and run in order; each says what state it leaves.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from wheels import NEW, OLD

from vllama_provision import paths
from vllama_provision.verify import read_key

from .conftest import INSTANCE, ROOT_DIR, Fleet

pytestmark = pytest.mark.lab
SERVER_MAIN = "lib/python3.11/site-packages/llama_cpp/server/__main__.py"
SWITCH_TASK = "Switch each changed instance to its new release."
VERIFY_TASK = "Verify every endpoint (readiness, /v1/models, a real completion)."


def upgrade_args(fleet: Fleet, *extra: str) -> list[str]:
    return ["upgrade", str(fleet.inventory), "--engine", "llamacpp", "--version", NEW, *extra]


class Poller:
    """Ask every host's /v1/models about ten times a second; remember when each failed (the
    connection refused or an error status: the engine is not serving)."""

    def __init__(self, fleet: Fleet):
        self.samples: dict[str, list[tuple[float, bool]]] = {h.name: [] for h in fleet.hosts}
        self.targets = {h.name: (f"http://{h.address}:8080/v1/models",
                                 read_key(h.name, INSTANCE)) for h in fleet.hosts}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._poll, args=(n,), daemon=True)
                        for n in self.targets]

    def _poll(self, name: str) -> None:
        url, key = self.targets[name]
        with httpx.Client(timeout=5.0, headers={"Authorization": f"Bearer {key}"}) as client:
            while not self.stop.is_set():
                started = time.time()
                try:
                    ok = client.get(url).status_code == 200
                except httpx.TimeoutException:
                    # Slow, not down: on a 2-core machine a neighbour's verification completion
                    # can delay an answer. A host that is down refuses the connection at once.
                    ok = True
                except httpx.HTTPError:
                    ok = False
                self.samples[name].append((started, ok))
                time.sleep(max(0.0, 0.1 - (time.time() - started)))

    def __enter__(self) -> Poller:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def failures(self, name: str) -> list[float]:
        """When (wall clock) the host did not answer."""
        return [at for at, ok in self.samples[name] if not ok]


def switch_windows(known: set[Path]) -> dict[str, tuple[float, float]]:
    """Per host, from the new upgrade runs' Ansible events: from its switch (the engine restarts
    right after) to the end of its verification (wall clock): the only time it may be down."""
    windows: dict[str, list[float]] = {}
    for run in known_runs() - known:
        if not run.name.endswith("-upgrade"):
            continue  # another command's run (other tests may share this machine)
        for event in run.glob("artifacts/*/job_events/*.json"):
            data = json.loads(event.read_text())
            info = data.get("event_data") or {}
            task, host = info.get("task"), info.get("host")
            if data["event"] != "runner_on_ok" or task not in (SWITCH_TASK, VERIFY_TASK):
                continue  # (skipped tasks of the prepare run also emit runner_on_start)
            at = datetime.fromisoformat(data["created"]).replace(tzinfo=UTC).timestamp()
            windows.setdefault(host, []).append(at)
    return {host: (min(times), max(times)) for host, times in windows.items()}


def fault(fleet: Fleet, host: Any, code: str) -> None:
    """Prepend ``code`` to the llama.cpp server entry point of the NEW engine on ``host``."""
    target = f"{fleet.venv(host, NEW)}/{SERVER_MAIN}"
    # After the module's `from __future__` line (nothing may precede it), else at the top.
    host.ssh(f"test -e {target}.orig || cp {target} {target}.orig; python3 -c "
             + shlex.quote("import sys; src, dst, code = sys.argv[1:]; lines = open(src).read()"
                           ".splitlines(True); at = next((i + 1 for i, l in enumerate(lines) "
                           "if l.startswith('from __future__')), 0); lines.insert(at, code + "
                           "'\\n'); open(dst, 'w').write(''.join(lines))")
             + f" {target}.orig {target} {shlex.quote(code)}")


def repair(fleet: Fleet, host: Any) -> None:
    target = f"{fleet.venv(host, NEW)}/{SERVER_MAIN}"
    host.ssh(f"if test -e {target}.orig; then mv {target}.orig {target}; fi")


def serving(host: Any, name: str = "smollm2-135m-instruct") -> bool:
    key = read_key(host.name, INSTANCE)
    try:
        body = httpx.get(f"http://{host.address}:8080/v1/models", timeout=10,
                         headers={"Authorization": f"Bearer {key}"}).json()
    except (httpx.HTTPError, ValueError):
        return False
    return [m["id"] for m in body.get("data", [])] == [name]


def wait_serving(host: Any, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if serving(host):
            return True
        time.sleep(1)
    return False


def start_cli(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NO_COLOR": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen([sys.executable, "-m", "vllama_provision.cli", *args], cwd=ROOT_DIR,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_event(cli: subprocess.Popen[bytes], known: set[Path], host: str, task: str,
               seconds: float = 900) -> bool:
    """Wait until the CLI's Ansible run reports ``task`` done on ``host`` (its event stream)."""
    runs = paths.state_dir() / "runs"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and cli.poll() is None:
        for run in set(runs.glob(f"*-{cli.pid}-upgrade")) - known:
            for event in run.glob("artifacts/*/job_events/*.json"):
                try:
                    data = json.loads(event.read_text())
                except (OSError, ValueError):
                    continue
                info = data.get("event_data") or {}
                if (data.get("event") == "runner_on_ok" and info.get("task") == task
                        and info.get("host") == host):
                    return True
        time.sleep(0.1)
    return False


def known_runs() -> set[Path]:
    runs = paths.state_dir() / "runs"
    return set(runs.iterdir()) if runs.is_dir() else set()


# ------------------------------------------------------------------------------- tests ---


def test_a_good_upgrade_switches_one_host_at_a_time(fleet: Fleet, run_cli: Any) -> None:
    """Leaves: every host on NEW."""
    before = {h.name: fleet.current(h) for h in fleet.hosts}
    calls_before = {h.name: len(fleet.hook_calls(h)) for h in fleet.hosts}
    known = known_runs()
    with Poller(fleet) as poller:
        time.sleep(1)
        result = run_cli(*upgrade_args(fleet))
        time.sleep(1)
    assert result.rc == 0, result.stderr
    for host in fleet.hosts:
        assert fleet.version(host) == NEW
        assert fleet.current(host) != before[host.name]
        inst = result.instance(host.name, INSTANCE)
        assert inst["verified"] is True and inst["engine_version"] == NEW
        assert inst["release"] == fleet.current(host)
        events = [r["event"] for r in fleet.history(host)[-2:]]
        assert events == ["switched", "verified"]
    # Each host was unavailable only during its own switch (switch -> restart -> verified),
    # and those windows come one after the other (batch 1), so no two hosts were ever down at
    # once and hosts not being switched never dropped.
    windows = switch_windows(known)
    assert sorted(windows) == sorted(h.name for h in fleet.hosts), windows
    order = [windows[h.name] for h in fleet.hosts]
    for (_s1, end), (start, _e2) in itertools.pairwise(order):
        assert end <= start, f"switch windows overlap: {windows}"
    for host in fleet.hosts:
        assert len(poller.samples[host.name]) > 50, "the poller barely ran"
        start, end = windows[host.name]
        outside = [t for t in poller.failures(host.name) if not start - 0.5 <= t <= end + 0.5]
        assert not outside, f"{host.name} dropped outside its own switch {windows}: {outside}"
    assert "--write-inventory" in result.stderr  # the inventory edit is printed
    # The hooks ran once each around every host's own switch (on the host, or on the controller
    # for the last host), told the host, the instance and the new release.
    for host in fleet.hosts:
        calls = fleet.hook_calls(host)[calls_before[host.name]:]
        assert [c[:4] for c in calls] == [
            [when, host.name, INSTANCE, fleet.current(host)] for when in ("pre", "post")], calls
        start, end = windows[host.name]
        assert float(calls[0][4]) <= start and float(calls[1][4]) >= end, (calls, start, end)


def test_rollback_and_roll_forward(fleet: Fleet, run_cli: Any) -> None:
    """Leaves: every host on OLD, with NEW prepared."""
    new = {h.name: fleet.current(h) for h in fleet.hosts}
    back = run_cli("rollback", str(fleet.inventory), "--batch", "100%")
    assert back.rc == 0, back.stderr
    assert all(fleet.version(h) == OLD and serving(h) for h in fleet.hosts)
    # Release ids differ per host (each hashes its own desired state): fleet-wide, --to names
    # the engine version; one host's release id (a prefix of it) works with --limit.
    forward = run_cli("rollback", str(fleet.inventory), "--batch", "100%", "--to", NEW)
    assert forward.rc == 0, forward.stderr
    assert all(fleet.current(h) == new[h.name] for h in fleet.hosts)
    assert all(forward.instance(h.name, INSTANCE)["verified"] for h in fleet.hosts)
    h1 = fleet.hosts[0]
    old_id = next(r["from"] for r in reversed(fleet.history(h1)) if r["event"] == "switched")
    one = run_cli("rollback", str(fleet.inventory), "--limit", h1.name, "--to", old_id[:8])
    assert one.rc == 0 and fleet.current(h1) == old_id and fleet.version(h1) == OLD
    again = run_cli("rollback", str(fleet.inventory), "--batch", "100%", "--to", OLD)
    assert again.rc == 0 and all(fleet.version(h) == OLD for h in fleet.hosts)


def test_a_new_release_that_cannot_start_is_rolled_back(fleet: Fleet, run_cli: Any) -> None:
    """Fault: NEW cannot start on host 2. Leaves: host 1 NEW, hosts 2-3 OLD."""
    h1, h2, h3 = fleet.hosts
    fault(fleet, h2, 'raise SystemExit("vllama test fault: this engine build cannot start")')
    untouched = (fleet.current(h3), len(fleet.history(h3)))
    result = run_cli(*upgrade_args(fleet))
    assert result.rc == 1
    assert fleet.version(h1) == NEW and serving(h1)
    assert fleet.version(h2) == OLD and serving(h2)
    assert (fleet.current(h3), len(fleet.history(h3))) == untouched
    failed = result.host(h2.name)
    assert failed["status"] == "failed"
    assert "Rolled back to" in failed["error"] and "verified" in failed["error"]
    assert failed["failed_task"] and failed["phase"].startswith("switch")
    assert result.host(h3.name)["status"] == "skipped"
    assert any("not switched" in n for n in result.host(h3.name)["notes"])
    assert [r["event"] for r in fleet.history(h2)[-3:]] == ["switched", "failed", "rolled_back"]
    # The report shows what host 2 runs now (OLD, rolled back), the plan beside it.
    inst = result.instance(h2.name, INSTANCE)
    assert (inst["release"], inst["engine_version"]) == (fleet.current(h2), OLD)
    assert inst["planned_engine_version"] == NEW and inst["planned_release"] != inst["release"]
    assert "To make llamacpp" not in result.stderr  # no inventory hint for an unfinished rollout
    marked = h2.ssh("ls /opt/vllama/instances/smollm2/releases/*/FAILED").stdout.split()
    assert len(marked) == 1
    # The host was taken out before its switch and, having failed, never put back by the hook.
    assert fleet.hook_calls(h2)[-1][:2] == ["pre", h2.name]


def test_apply_refuses_a_downgrade_unless_allowed(fleet: Fleet, run_cli: Any) -> None:
    """Host 1 runs NEW; the inventory asks for OLD. Leaves: every host on OLD."""
    h1 = fleet.hosts[0]
    refused = run_cli("apply", str(fleet.inventory), "--limit", h1.name)
    assert refused.rc == 1
    entry = refused.host(h1.name)
    assert entry["status"] == "refused"
    assert NEW in entry["error"] and OLD in entry["error"] and "--allow-downgrade" in entry["error"]
    assert fleet.version(h1) == NEW and serving(h1)
    inst = refused.instance(h1.name, INSTANCE)
    assert (inst["release"], inst["engine_version"]) == (fleet.current(h1), NEW)
    assert inst["planned_engine_version"] == OLD
    # Allowed, through apply's batch path (the rollout procedure: preflight, prepare, switch).
    allowed = run_cli("apply", str(fleet.inventory), "--limit", h1.name, "--allow-downgrade",
                      "--batch", "1")
    assert allowed.rc == 0, allowed.stderr
    assert "batch 1/1" in allowed.stderr and "preflight on 1 host(s)" in allowed.stderr
    assert fleet.version(h1) == OLD and serving(h1)


def test_an_upgrade_to_a_version_nobody_built_is_refused_before_any_change(
        fleet: Fleet, run_cli: Any) -> None:
    """No wheel of llamacpp 9.9.9 exists. Leaves: every host on OLD, untouched."""
    before = {h.name: (fleet.current(h), len(fleet.history(h))) for h in fleet.hosts}
    result = run_cli("upgrade", str(fleet.inventory), "--engine", "llamacpp", "--version",
                     "9.9.9", "--write-inventory")
    assert result.rc == 1
    assert {h.name: (fleet.current(h), len(fleet.history(h))) for h in fleet.hosts} == before
    assert all(serving(h) for h in fleet.hosts)
    refused = [h.name for h in fleet.hosts if result.host(h.name)["status"] == "refused"]
    assert refused, result.report
    assert ("run `vllama-provision wheelhouse build --engine llama-cpp-python --version 9.9.9`"
            in result.host(refused[0])["error"])
    for host in fleet.hosts:
        inst = result.instance(host.name, INSTANCE)
        # RELEASE is what the host runs, not the release 9.9.9 would have been.
        assert (inst["release"], inst["engine_version"]) == (fleet.current(host), OLD), inst
        if host.name in refused:
            assert inst["planned_engine_version"] == "9.9.9"
    assert "To make llamacpp 9.9.9" not in result.stderr
    assert "inventory: not changed (the rollout did not complete)" in result.stderr
    assert "9.9.9" not in fleet.inventory.read_text()


def test_a_new_release_serving_the_wrong_model_is_rolled_back(fleet: Fleet,
                                                              run_cli: Any) -> None:
    """Fault: NEW on host 2 serves another model name. Leaves: host 1 NEW, hosts 2-3 OLD."""
    h1, h2, h3 = fleet.hosts
    repair(fleet, h2)
    fault(fleet, h2, "import sys; sys.argv = ['wrong-model-name' if a == "
                     "'smollm2-135m-instruct' else a for a in sys.argv]")
    untouched = (fleet.current(h3), len(fleet.history(h3)))
    result = run_cli(*upgrade_args(fleet))
    assert result.rc == 1
    assert fleet.version(h1) == NEW and serving(h1)
    assert fleet.version(h2) == OLD and serving(h2)
    assert (fleet.current(h3), len(fleet.history(h3))) == untouched
    error = result.host(h2.name)["error"]
    assert "wrong-model-name" in error and "Rolled back to" in error
    assert result.host(h3.name)["status"] == "skipped"


def test_a_host_paused_during_its_switch_stops_the_rollout(fleet: Fleet, run_cli: Any) -> None:
    """Host 2 freezes right after its switch. Leaves: every host on NEW."""
    _h1, h2, h3 = fleet.hosts
    repair(fleet, h2)
    untouched = fleet.current(h3)
    known = known_runs()
    cli = start_cli(*upgrade_args(fleet))
    try:
        assert wait_event(cli, known, h2.name, SWITCH_TASK), "host 2 never switched"
        fleet.lab.pause(h2.name)
        rc = cli.wait(timeout=600)
    finally:
        fleet.lab.resume(h2.name)
    assert rc == 1
    assert fleet.current(h3) == untouched, "a host after the paused one was touched"
    status = run_cli("status", str(fleet.inventory))
    h2_status = status.report["hosts"][h2.name]
    h2_instance = next(i for i in h2_status["instances"] if i["name"] == INSTANCE)
    assert h2_instance["unfinished_switch"]["to"] == fleet.current(h2)
    assert h2_instance["release"] == fleet.current(h2) and h2_status["status"] == "failed"
    assert h2_status["lock"], "the paused run's lock should still be on host 2"
    assert status.rc == 1 and h2.name in status.report["summary"]["unhealthy"]
    # The repair is a re-run of the same upgrade (all hosts at once: nothing left to stage).
    rerun = run_cli(*upgrade_args(fleet, "--batch", "100%"))
    assert rerun.rc == 0, rerun.stderr
    assert all(fleet.version(h) == NEW and serving(h) for h in fleet.hosts)
    assert any("gone" in n for n in rerun.host(h2.name)["notes"])
    healthy = run_cli("status", str(fleet.inventory))
    assert healthy.rc == 0 and healthy.report["summary"]["healthy"] is True


def test_a_cli_killed_between_switch_and_verify_converges(fleet: Fleet, run_cli: Any) -> None:
    """SIGKILL right after host 1's switch. Leaves: every host on NEW."""
    h1 = fleet.hosts[0]
    back = run_cli("rollback", str(fleet.inventory), "--batch", "100%")
    assert back.rc == 0 and all(fleet.version(h) == OLD for h in fleet.hosts)
    known = known_runs()
    cli = start_cli(*upgrade_args(fleet))
    assert wait_event(cli, known, h1.name, SWITCH_TASK), "host 1 never switched"
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait()
    assert wait_serving(h1), "host 1 was left without a serving release"
    assert fleet.history(h1)[-1]["event"] == "switched"  # no outcome yet
    rerun = run_cli(*upgrade_args(fleet, "--batch", "100%"))
    assert rerun.rc == 0, rerun.stderr
    assert all(fleet.version(h) == NEW and serving(h) for h in fleet.hosts)
    assert fleet.history(h1)[-1]["event"] == "verified"
    pid = h1.ssh("systemctl show -p MainPID --value vllama-smollm2.service").stdout.strip()
    exe = h1.ssh(f"readlink -f /proc/{pid}/cwd; tr '\\0' ' ' < /proc/{pid}/cmdline").stdout
    assert "llama_cpp.server" in exe
    # The engine process runs the NEW environment, not the one it had before the kill.
    maps = h1.ssh(f"grep -o '/opt/vllama/engines/[^/]*' /proc/{pid}/maps | sort -u").stdout
    assert f"llamacpp-{NEW}" in maps
