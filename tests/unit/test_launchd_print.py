"""launchd's and the power manager's answers, parsed offline (no Mac runs these tests).

plugins/module_utils/vllama_launchd.py reads recorded real outputs of ``launchctl print`` and
``pmset -g`` (tests/fixtures/macos, each with its public source in SOURCES.md); the shapes no
recording shows are written here. The recorded ``system_profiler SPDisplaysDataType -json`` of
an M5 checks vllama_macos.parse_gpu_cores too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vllama_provision import paths

RECORDED = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "macos"

launchd = paths.load_plugin_file("module_utils/vllama_launchd.py", "vllama_launchd_test")
macos = paths.load_plugin_file("module_utils/vllama_macos.py", "vllama_macos_launchd_test")


def recorded(name: str) -> str:
    return (RECORDED / name).read_text(encoding="utf-8")


# ----------------------------------------------------------------------- recorded outputs ---


def test_a_running_launch_daemon() -> None:
    parsed = launchd.parse_print(recorded("launchctl-print-system-daemon-running.txt"))
    assert parsed == {
        "state": "running",
        "pid": 383,
        "last_exit_code": None,  # "(never exited)"
        "path": "/Library/LaunchDaemons/org.nixos.nix-daemon.plist",
        "program": "/bin/sh",
        "arguments": ["/bin/sh", "-c",
                      "/bin/wait4path /nix/store && exec /nix/store/"
                      "65ghpdw6n9vawhzx8bzqym2zmzrz4dmc-nix-2.34.7+1/bin/nix-daemon"],
        "runs": 1,
    }


def test_a_running_launch_agent_without_an_exit_code_line() -> None:
    # It was restarted after a SIGTERM: launchd prints "last terminating signal", no exit code.
    parsed = launchd.parse_print(recorded("launchctl-print-gui-agent-running.txt"))
    python = "/opt/homebrew/Caskroom/miniconda/base/envs/jupyterlab313/bin/python"
    assert parsed == {
        "state": "running",
        "pid": 35711,
        "last_exit_code": None,
        "path": "/Users/tsgsz/Library/LaunchAgents/ai.openclaw.enhance.monitor.plist",
        "program": python,
        "arguments": [python, "-m", "openclaw_enhance.monitor_runtime", "--once",
                      "--openclaw-home", "/Users/tsgsz/.openclaw",
                      "--state-root", "/Users/tsgsz/.openclaw/openclaw-enhance"],
        "runs": 2,
    }


def test_a_launch_agent_between_runs() -> None:
    parsed = launchd.parse_print(recorded("launchctl-print-user-agent-not-running.txt"))
    binary = "/Users/cp/go/src/github.com/creativeprojects/resticprofile/resticprofile"
    assert parsed == {
        "state": "not running",
        "pid": None,
        "last_exit_code": 0,
        "path": "/Users/cp/Library/LaunchAgents/local.resticprofile.self.check.agent.plist",
        "program": binary,
        "arguments": [binary, "--no-prio", "--no-ansi", "--config", "examples/dev.yaml",
                      "run-schedule", "check@self"],
        "runs": 1,
    }


def test_a_launch_agent_whose_last_run_failed() -> None:
    parsed = launchd.parse_print(recorded("launchctl-print-gui-agent-spawn-scheduled.txt"))
    work = "/Users/runner/work/teamwork-leader/teamwork-leader"
    assert parsed == {
        "state": "spawn scheduled",
        "pid": None,
        "last_exit_code": 1,
        "path": "/Users/runner/Library/LaunchAgents/com.teamwork-leader.auto-resume-daemon.plist",
        "program": "/usr/bin/env",
        "arguments": ["/usr/bin/env", "python3", f"{work}/scripts/daemon.py", "--watch",
                      f"{work}/.teamlead-project/.teamlead/"],
        "runs": 2,
    }


@pytest.mark.parametrize("name", ["launchctl-print-system-daemon-running.txt",
                                  "launchctl-print-gui-agent-running.txt",
                                  "launchctl-print-user-agent-not-running.txt",
                                  "launchctl-print-gui-agent-spawn-scheduled.txt"])
def test_nested_blocks_stay_out_of_the_job_fields(name: str) -> None:
    # Every recording has nested "state = active", "type = resource", "ID = ...", "port = ..."
    # or "keepalive = 0" lines; none may reach the job's own fields.
    text = recorded(name)
    fields, _arguments = launchd.print_fields(text)
    assert fields["state"] == launchd.parse_print(text)["state"] != "active"
    assert fields["type"] in ("LaunchDaemon", "LaunchAgent")
    for nested in ("ID", "name", "port", "keepalive", "PATH", "XPC_SERVICE_NAME",
                   "activation rate", "successful exit"):
        assert nested not in fields


def test_the_same_output_with_spaces_for_tabs() -> None:
    text = recorded("launchctl-print-gui-agent-spawn-scheduled.txt")
    assert launchd.parse_print(text.replace("\t", "    ")) == launchd.parse_print(text)
    flush_left = "\n".join(line.strip() for line in text.splitlines())
    assert launchd.parse_print(flush_left) == launchd.parse_print(text)


def test_pmset_as_a_mac_printed_it() -> None:
    settings = launchd.parse_pmset(recorded("pmset-g-hackintosh.txt"))
    assert settings == {
        "standby": "1", "Sleep On Power Button": "1", "womp": "1",
        "hibernatefile": "/var/vm/sleepimage", "proximitywake": "1", "powernap": "1",
        "networkoversleep": "0", "disksleep": "10", "standbydelayhigh": "86400",
        "sleep": "1",  # "1 (sleep prevented by sharingd, coreaudiod)"
        "hibernatemode": "3", "ttyskeepawake": "1", "displaysleep": "20", "tcpkeepalive": "1",
        "highstandbythreshold": "50", "standbydelaylow": "86400",
    }


def test_gpu_cores_from_a_recorded_system_profiler() -> None:
    assert macos.parse_gpu_cores(recorded("system_profiler-displays-m5.json")) == 10


# ------------------------------------------------------------------------ written shapes ---


def test_a_stopped_job_with_a_named_exit_code() -> None:
    text = ("gui/501/com.example.engine = {\n\tactive count = 0\n\tstate = not running\n"
            "\truns = 3\n\tlast exit code = 78: EX_CONFIG\n}\n")
    parsed = launchd.parse_print(text)
    assert (parsed["state"], parsed["pid"], parsed["last_exit_code"], parsed["runs"]) == (
        "not running", None, 78, 3)


def test_a_job_that_never_exited_and_never_ran() -> None:
    text = "system/com.example.engine = {\n\tstate = not running\n\truns = 0\n" \
           "\tlast exit code = (never exited)\n}\n"
    parsed = launchd.parse_print(text)
    assert (parsed["state"], parsed["pid"], parsed["last_exit_code"], parsed["runs"]) == (
        "not running", None, None, 0)


def test_nested_blocks_do_not_leak_and_arguments_do() -> None:
    text = "\n".join([
        "system/com.example.engine = {",
        "\tactive count = 1",
        "\tpath = /Library/LaunchDaemons/com.example.engine.plist",
        "\tstate = running",
        "\tprogram = /usr/local/bin/engine",
        "\targuments = {",
        "\t\t/usr/local/bin/engine",
        "\t\t--port=8080",
        "\t}",
        "\tenvironment = {",
        "\t\tpid => 1",
        "\t\tprogram = /bin/false",
        "\t}",
        "\tendpoints = {",
        '\t\t"com.example.engine.xpc" = {',
        "\t\t\tport = 0x1a03",
        "\t\t\tactive = 1",
        "\t\t\tstate = inactive",
        "\t\t}",
        "\t}",
        "\truns = 4",
        "\tpid = 4242",
        "\tlast exit code = 0",
        "\tresource coalition = {",
        "\t\tstate = active",
        "\t\ttype = resource",
        "\t}",
        "}",
    ])
    assert launchd.parse_print(text) == {
        "state": "running", "pid": 4242, "last_exit_code": 0,
        "path": "/Library/LaunchDaemons/com.example.engine.plist",
        "program": "/usr/local/bin/engine",
        "arguments": ["/usr/local/bin/engine", "--port=8080"], "runs": 4,
    }
    fields, _arguments = launchd.print_fields(text)
    assert "port" not in fields and "active" not in fields and "type" not in fields


def test_an_argument_printed_over_several_lines_keeps_its_brace() -> None:
    # launchd prints an argument holding newlines raw: a "}" of a shell script sits in column 0.
    text = "\n".join([
        "system/com.example.engine = {",
        "\tstate = running",
        "\targuments = {",
        "\t\t/bin/sh",
        "\t\t-c",
        "\t\tprog=/opt/engine/bin/engine",
        '[ -x "$prog" ] || {',
        "  pid = 99",
        "}",
        'exec "$prog"',
        "\t}",
        "\tpid = 1219",
        "}",
    ])
    parsed = launchd.parse_print(text)
    assert parsed["pid"] == 1219
    assert parsed["arguments"] == ["/bin/sh", "-c", "prog=/opt/engine/bin/engine",
                                   '[ -x "$prog" ] || {', "pid = 99", "}", 'exec "$prog"']


def test_output_without_its_header() -> None:
    # What `launchctl print ... | grep` leaves, or a job block pasted without its first line.
    text = "\tstate = running\n\tpid = 501\n\tlast exit code = 15\n"
    parsed = launchd.parse_print(text)
    assert (parsed["state"], parsed["pid"], parsed["last_exit_code"]) == ("running", 501, 15)


@pytest.mark.parametrize("text", ["", None, "Bad request.\nCould not find service "
                                  '"com.example.engine" in domain for system\n'])
def test_nothing_told_is_nothing_parsed(text: str | None) -> None:
    assert launchd.parse_print(text) == {
        "state": "", "pid": None, "last_exit_code": None, "path": "", "program": "",
        "arguments": [], "runs": None,
    }


def test_pmset_with_a_tab_and_a_display_note() -> None:
    text = ("System-wide power settings:\n SleepDisabled\t\t1\nCurrently in use:\n"
            " autorestart          0\n"
            " displaysleep         10 (display sleep prevented by com.example.app)\n")
    assert launchd.parse_pmset(text) == {"SleepDisabled": "1", "autorestart": "0",
                                         "displaysleep": "10"}
    assert launchd.parse_pmset("") == {}
    assert launchd.parse_pmset(None) == {}
