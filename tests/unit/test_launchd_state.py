"""A Mac's side of the converged check and the release inspection, without a Mac: launchd's
job state read from `launchctl print` (a recorded real output, and the shapes the stand-in
prints), `ps -o etime=`, `pmset -g` and the wired limit; and the crash check of the
vllama_launchd module. launchctl, pmset, sysctl and ps are small scripts written here (named
stand-ins), the rest is the collection's own code.
"""

from __future__ import annotations

import importlib
import plistlib
import stat
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "macos"
RELEASES = importlib.import_module(
    "ansible_collections.vllama.provision.plugins.module_utils.vllama_releases")
STATE = importlib.import_module(
    "ansible_collections.vllama.provision.plugins.module_utils.vllama_state")
MODULE = importlib.import_module(
    "ansible_collections.vllama.provision.plugins.modules.vllama_launchd")


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize(("text", "seconds"), [
    ("00:07", 7), ("12:34", 754), ("01:02:03", 3723), ("2-01:00:00", 176400), ("  05:00\n", 300)])
def test_ps_elapsed_time_in_seconds(text: str, seconds: int) -> None:
    assert RELEASES.elapsed_seconds(text) == seconds


def test_a_running_job_is_active_with_its_start_time(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorded `launchctl print` of a running daemon: active, started when ps says."""
    recorded = (FIXTURES / "launchctl-print-system-daemon-running.txt").read_text()
    printed = tmp_path / "print.txt"
    printed.write_text(recorded)
    launchctl = _script(tmp_path / "launchctl", f'cat "{printed}"\n')
    monkeypatch.setattr(RELEASES, "LAUNCHCTL", {"path": str(launchctl)})
    real_run = RELEASES.subprocess.run

    def run(argv: list[str], **kwargs: Any) -> Any:
        if argv[0] == "ps":
            assert argv[-1] == "383"  # the recorded pid
            return real_run(["echo", "01:40"], **kwargs)
        return real_run(argv, **kwargs)

    monkeypatch.setattr(RELEASES.subprocess, "run", run)
    state = RELEASES.service_state("system/org.nixos.nix-daemon")
    assert state["active"] == "active" and state["loaded"] is True and state["pid"] == 383
    assert abs(state["started"] - (time.time() - 100)) < 5
    # Its plist is not on this machine: launchd holds a job whose plist is gone.
    assert state["need_reload"] is True


def test_a_changed_plist_needs_a_reload_and_an_unloaded_job_is_inactive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plist = tmp_path / "org.vllama.chat.plist"
    argv = ["/opt/vllama/instances/chat/current/engine/bin/python",
            "/opt/vllama/instances/chat/current/engine/bin/llama-server",
            "--release-file", "/opt/vllama/instances/chat/current/engine.json"]
    plist.write_bytes(plistlib.dumps({"Label": "org.vllama.chat", "ProgramArguments": argv}))
    printed = tmp_path / "print.txt"
    printed.write_text("system/org.vllama.chat = {\n\tactive count = 0\n"
                       f"\tpath = {plist}\n\tstate = not running\n\n\targuments = {{\n"
                       + "".join(f"\t\t{a}\n" for a in argv) + "\t}\n\n\truns = 1\n"
                       "\tlast exit code = 1\n}\n")
    launchctl = _script(tmp_path / "launchctl",
                        f'[ "$2" = system/org.vllama.chat ] || {{ echo "Bad request." >&2; '
                        f'exit 113; }}\ncat "{printed}"\n')
    monkeypatch.setattr(RELEASES, "LAUNCHCTL", {"path": str(launchctl)})
    state = RELEASES.service_state("system/org.vllama.chat")
    assert (state["active"], state["need_reload"], state["started"]) == ("inactive", False, None)
    plist.write_bytes(plistlib.dumps({"Label": "org.vllama.chat",
                                      "ProgramArguments": [*argv[:2], "--other"]}))
    assert RELEASES.service_state("system/org.vllama.chat")["need_reload"] is True
    gone = RELEASES.service_state("system/org.vllama.other")
    assert (gone["loaded"], gone["active"]) == (False, "inactive")
    # The converged check words it in systemctl's terms, launchd named.
    props = STATE._launchd_properties("system/org.vllama.other")
    assert props == {"ActiveState": "inactive", "UnitFileState": "", "NeedDaemonReload": "no"}


PMSET = """System-wide power settings:
Currently in use:
 standby              0
 sleep                1 (sleep prevented by powerd)
 autorestart          0
 disksleep            10
 displaysleep         10
"""


def test_power_settings_and_the_wired_limit_are_compared(tmp_path: Path) -> None:
    assert STATE.pmset_values(PMSET) == {"standby": "0", "sleep": "1", "autorestart": "0",
                                         "disksleep": "10", "displaysleep": "10"}
    # A recorded pmset -g: "Sleep On Power Button" is not a setting pmset -a takes, and this
    # machine lists no autorestart (not every Mac has it): that one is left alone.
    recorded = STATE.pmset_values((FIXTURES / "pmset-g-hackintosh.txt").read_text())
    assert recorded["sleep"] == "1" and recorded["disksleep"] == "10"
    assert "autorestart" not in recorded and "Sleep" not in recorded
    filters = importlib.import_module("ansible_collections.vllama.provision.plugins.filter.vllama")
    assert filters.vllama_pmset_args(
        (FIXTURES / "pmset-g-hackintosh.txt").read_text(),
        {"sleep": 0, "disksleep": 0, "autorestart": 1}) == ["disksleep", "0", "sleep", "0"]
    _script(tmp_path / "usr/bin/pmset", f"cat <<'EOF'\n{PMSET}EOF\n")
    _script(tmp_path / "usr/sbin/sysctl", "echo 0\n")
    diff = STATE.Differences()
    STATE.check_macos(diff, {"command_root": str(tmp_path),
                             "pmset": {"sleep": 0, "disksleep": 0, "autorestart": 1},
                             "wired_limit_mb": 8192})
    assert diff.items == [
        "pmset autorestart is 0, not 1", "pmset disksleep is 10, not 0",
        "pmset sleep is 1, not 0", "iogpu.wired_limit_mb is 0, not 8192"]
    assert set(diff.phases) == {"configure"}


def test_pmset_arguments_name_only_what_differs() -> None:
    filters = importlib.import_module("ansible_collections.vllama.provision.plugins.filter.vllama")
    wanted = {"sleep": 0, "disksleep": 0, "autorestart": 1}
    assert filters.vllama_pmset_args(PMSET, wanted) == ["autorestart", "1", "disksleep", "0",
                                                        "sleep", "0"]
    converged = PMSET.replace("1 (sleep", "0 (sleep").replace("autorestart          0",
                                                              "autorestart          1")
    assert filters.vllama_pmset_args(converged.replace("10\n displaysleep", "0\n displaysleep"),
                                     wanted) == []


class _Jobs:
    """launchctl print answers in turn (None: not loaded)."""

    def __init__(self, *answers: dict[str, Any] | None) -> None:
        self.answers = list(answers)

    def __call__(self) -> dict[str, Any] | None:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_a_server_that_stays_up_settles_and_one_that_exits_does_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MODULE.time, "sleep", lambda _s: None)
    up = {"state": "running", "pid": 41}
    assert MODULE._settled(_Jobs(up), 0) == up
    # Exited after its start: not running, with the exit code.
    exited = {"state": "not running", "pid": None, "last_exit_code": 2}
    clock = iter(range(100))
    monkeypatch.setattr(MODULE.time, "time", lambda: next(clock))
    assert MODULE._settled(_Jobs(up, exited), 5) == exited
    # Restarted by KeepAlive (a new pid): it crashed.
    assert MODULE._settled(_Jobs(up, {"state": "running", "pid": 42}), 5) is None
    # Never ran within the time.
    assert MODULE._settled(_Jobs({"state": "spawn scheduled", "pid": None}), 3)["pid"] is None
