"""The stand-in Mac's commands (tests/macos/standin), offline: no systemd, no Mac.

Each stand-in is checked as a program (run as a subprocess, its state under a temporary folder
through VLLAMA_MACOS_STANDIN_PREFIX) and through its pure parts (loaded from its file): what it
prints is read back by the collection's own parsers, launchctl's systemd-run command and print
text are built from plists like the role's, newsyslog reads configurations like the role's.
launchctl's verbs run against a fake systemd; the real one is exercised on the lab host only.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import plistlib
import shlex
import shutil
import stat
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest

from vllama_provision import paths, validators

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "tests" / "macos" / "standin"
SCRIPTS = ("usr/bin/uname", "usr/bin/sw_vers", "usr/sbin/sysctl", "usr/sbin/system_profiler",
           "usr/bin/fdesetup", "usr/bin/xcode-select", "bin/launchctl", "usr/bin/pmset",
           "usr/sbin/newsyslog")
macos = paths.load_plugin_file("module_utils/vllama_macos.py", "vllama_macos_standin_test")


def load(relative: str) -> ModuleType:
    """A stand-in script (no .py suffix) or lib module, loaded from its file."""
    path = STANDIN / relative
    name = "standin_" + relative.replace("/", "_").replace("-", "_").replace(".py", "")
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


lib = load("lib/standin.py")
uname = load("usr/bin/uname")
sw_vers = load("usr/bin/sw_vers")
sysctl = load("usr/sbin/sysctl")
profiler = load("usr/sbin/system_profiler")
fdesetup = load("usr/bin/fdesetup")
xcode = load("usr/bin/xcode-select")
pmset = load("usr/bin/pmset")
newsyslog = load("usr/sbin/newsyslog")
launchctl = load("bin/launchctl")
install = load("lib/install.py")


@pytest.fixture
def prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-ins' /var/log, /var/lib and /run under a temporary folder."""
    monkeypatch.setenv(lib.PREFIX_ENV, str(tmp_path / "host"))
    return tmp_path / "host"


def call(script: str, *argv: str, prefix: Path, user: int | None = None,
         where: Path = STANDIN) -> subprocess.CompletedProcess:
    env = {**os.environ, lib.PREFIX_ENV: str(prefix)}
    command = [str(where / script), *argv]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def calls(prefix: Path) -> list[dict]:
    text = (prefix / "var/log/vllama-macos-standin/calls.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


# ------------------------------------------------------------------ the tree ---


def test_every_stand_in_is_an_executable_documented_python_script() -> None:
    found = {str(p.relative_to(STANDIN)) for p in STANDIN.glob("*bin/**/*") if p.is_file()}
    found |= {str(p.relative_to(STANDIN)) for p in STANDIN.glob("usr/*bin/*") if p.is_file()}
    assert found == set(SCRIPTS) == set(install.SCRIPTS)
    for script in SCRIPTS:
        path = STANDIN / script
        assert path.stat().st_mode & stat.S_IXUSR, script
        text = path.read_text()
        assert text.startswith('#!/usr/bin/python3\n"""Stand-in for macOS\'s /'), script
        assert "/" + script in text.split('"""')[1], script  # names the command it imitates


def test_the_installer_lists_every_file_at_macos_paths_under_the_root() -> None:
    listed = {entry["dest"]: entry for entry in install.files("/opt/vllama-macos/")}
    for script in SCRIPTS:
        entry = listed[f"/opt/vllama-macos/{script}"]
        assert entry["mode"] == "0755" and entry["content"] == (STANDIN / script).read_bytes()
    assert listed["/opt/vllama-macos/lib/standin.py"]["mode"] == "0644"
    assert listed["/opt/vllama-macos/usr/bin/python3"] == {
        "dest": "/opt/vllama-macos/usr/bin/python3", "link": "/usr/bin/python3"}
    unit = listed["/etc/systemd/system/vllama-macos-launchd-boot.service"]["content"].decode()
    assert "ExecStart=/opt/vllama-macos/bin/launchctl --boot\n" in unit and "@ROOT@" not in unit
    assert "Type=oneshot" in unit and "RemainAfterExit=yes" in unit
    assert "WantedBy=multi-user.target" in unit and "After=local-fs.target network.target" in unit
    assert len(listed) == len(SCRIPTS) + 3
    with pytest.raises(ValueError):
        install.files("opt/vllama-macos")


def test_the_tree_works_wherever_it_is_copied(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere"
    shutil.copytree(STANDIN, copy)
    done = call("usr/bin/sw_vers", "-productVersion", prefix=tmp_path / "host", where=copy)
    assert (done.returncode, done.stdout) == (0, "14.6.1\n")


# ------------------------------------------------------------------ every call recorded ---


def test_every_call_is_recorded_as_one_json_line(prefix: Path) -> None:
    for script in SCRIPTS:
        call(script, "--bogus-option", prefix=prefix)
    call("usr/bin/uname", "-sm", prefix=prefix)
    recorded = calls(prefix)
    assert [r["cmd"] for r in recorded] == [Path(s).name for s in SCRIPTS] + ["uname"]
    assert recorded[-1]["argv"] == ["-sm"]
    assert all(set(r) == {"t", "cmd", "argv"} and isinstance(r["t"], float) for r in recorded)


def test_concurrent_calls_are_all_recorded(prefix: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: call("usr/bin/uname", f"-{'smr'[n % 3]}", prefix=prefix),
                      range(24)))
    assert sorted(r["argv"][0] for r in calls(prefix)) == ["-m"] * 8 + ["-r"] * 8 + ["-s"] * 8


def test_any_user_records_its_calls(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root to run a stand-in as another user")
    prefix = Path(tempfile.mkdtemp(prefix="vllama-standin-"))  # traversable by nobody
    try:
        prefix.chmod(0o755)
        assert call("usr/bin/uname", prefix=prefix).returncode == 0  # root creates the log
        log = prefix / "var/log/vllama-macos-standin"
        assert stat.S_IMODE(log.stat().st_mode) == 0o1777
        assert stat.S_IMODE((log / "calls.jsonl").stat().st_mode) == 0o666
        done = call("usr/bin/uname", "-m", prefix=prefix, user=65534)
        assert (done.returncode, done.stdout, done.stderr) == (0, "arm64\n", "")
        assert [r["argv"] for r in calls(prefix)] == [[], ["-m"]]
        (log / "calls.jsonl").chmod(0o644)  # a call that cannot be recorded says so
        done = call("usr/bin/uname", prefix=prefix, user=65534)
        assert done.returncode == 0 and "could not record this call of uname" in done.stderr
    finally:
        shutil.rmtree(prefix)


# ------------------------------------------------------------------ facts' commands ---


@pytest.mark.parametrize(("argv", "out"), [
    ([], "Darwin\n"), (["-s"], "Darwin\n"), (["-m"], "arm64\n"), (["-r"], "23.6.0\n"),
    (["-sm"], "Darwin arm64\n"), (["-m", "-s"], "Darwin arm64\n"), (["-p"], "arm\n"),
    (["-a"], "Darwin mac 23.6.0 " + uname.VERSION + " arm64\n")])
def test_uname(argv: list[str], out: str) -> None:
    assert uname.answer(argv, "mac") == (0, out, "")


def test_uname_refuses_what_macos_refuses() -> None:
    assert uname.answer(["-z"], "mac")[0] == 1
    assert uname.answer(["x"], "mac")[0] == 1


def test_sw_vers_as_the_facts_module_reads_it(prefix: Path) -> None:
    done = call("usr/bin/sw_vers", prefix=prefix)
    assert done.stdout == ("ProductName:\t\tmacOS\nProductVersion:\t\t14.6.1\n"
                           "BuildVersion:\t\t23G93\n")
    assert macos.parse_sw_vers(done.stdout) == {"name": "macOS", "version": "14.6.1",
                                                "build": "23G93"}
    assert call("usr/bin/sw_vers", "-buildVersion", prefix=prefix).stdout == "23G93\n"
    assert call("usr/bin/sw_vers", "--productName", prefix=prefix).stdout == "macOS\n"
    lib.write_json(prefix / "var/lib/vllama-macos-standin/sw_vers.json",
                   {"version": "12.7.6", "build": "21H1320"})
    assert call("usr/bin/sw_vers", "-productVersion", prefix=prefix).stdout == "12.7.6\n"
    assert call("usr/bin/sw_vers", "-bogus", prefix=prefix).returncode == 1


def test_sysctl_reads() -> None:
    status, out, err, _ = sysctl.answer(["-n", "hw.memsize", "machdep.cpu.brand_string",
                                         "hw.model", "iogpu.wired_limit_mb"], 0, False)
    assert (status, out, err) == (0, "34359738368\nApple M2 Pro\nMac14,12\n0\n", "")
    assert macos.parse_sysctl_int(out.splitlines()[0]) == 32 * 1024 ** 3
    assert sysctl.answer(["hw.model"], 0, False)[1] == "hw.model: Mac14,12\n"
    status, out, err, _ = sysctl.answer(["-n", "machdep.cpu.model"], 0, False)
    assert (status, out, err) == (1, "", "sysctl: unknown oid 'machdep.cpu.model'\n")
    assert sysctl.answer(["-i", "-n", "nope", "hw.model"], 0, False)[:2] == (0, "Mac14,12\n")
    assert sysctl.answer([], 0, False)[2].startswith("usage: sysctl")
    assert sysctl.answer(["-Z", "hw.model"], 0, False)[0] == 1


def test_sysctl_writes_the_wired_limit_only_as_root() -> None:
    assert sysctl.answer(["iogpu.wired_limit_mb=8192"], 0, True) == (
        0, "iogpu.wired_limit_mb: 0 -> 8192\n", "", 8192)
    assert sysctl.answer(["-w", "iogpu.wired_limit_mb=0"], 8192, True)[1] == \
        "iogpu.wired_limit_mb: 8192 -> 0\n"
    assert sysctl.answer(["-n", "iogpu.wired_limit_mb=1"], 5, True)[1] == "5 -> 1\n"
    assert sysctl.answer(["iogpu.wired_limit_mb=8192"], 0, False) == (
        1, "iogpu.wired_limit_mb: 0\n",
        "sysctl: iogpu.wired_limit_mb=8192: Operation not permitted\n", 0)
    assert sysctl.answer(["hw.memsize=1"], 0, True) == (
        1, "", "sysctl: oid 'hw.memsize' is read only\n", 0)
    assert sysctl.answer(["iogpu.wired_limit_mb=lots"], 0, True)[2] == \
        "sysctl: invalid int 'lots'\n"
    assert sysctl.answer(["iogpu.wired_limit_mb=-1"], 0, True)[0] == 1


def test_the_wired_limit_is_kept_in_run_until_a_restart(prefix: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("writing the wired limit needs root")
    assert call("usr/sbin/sysctl", "iogpu.wired_limit_mb=26000", prefix=prefix).returncode == 0
    assert call("usr/sbin/sysctl", "-n", "iogpu.wired_limit_mb", prefix=prefix).stdout == \
        "26000\n"
    assert (prefix / "run/vllama-macos-standin/sysctl.json").exists()
    shutil.rmtree(prefix / "run")  # a restart
    assert call("usr/sbin/sysctl", "-n", "iogpu.wired_limit_mb", prefix=prefix).stdout == "0\n"


def test_system_profiler_as_the_facts_module_reads_it() -> None:
    status, out, _ = profiler.answer(["SPDisplaysDataType", "-json"])
    assert status == 0 and macos.parse_gpu_cores(out) == 19
    assert out.startswith('{\n  "SPDisplaysDataType" : [\n    {\n      "_name" : "Apple M2 Pro",')
    gpu = json.loads(out)["SPDisplaysDataType"][0]
    assert gpu["sppci_device_type"] == "spdisplays_gpu"
    assert gpu["spdisplays_mtlgpufamilysupport"] == "spdisplays_metal3"
    assert profiler.answer(["SPHardwareDataType", "-json"])[1] == "{}\n"
    assert "Total Number of Cores: 19" in profiler.answer(["SPDisplaysDataType"])[1]


def test_fdesetup_and_xcode_select() -> None:
    assert macos.parse_filevault(fdesetup.answer(["status"], False)[1]) is False
    assert macos.parse_filevault(fdesetup.answer(["status"], True)[1]) is True
    assert fdesetup.answer(["enable"], False)[0] == 1
    assert xcode.answer(["-p"], True) == (0, "/Library/Developer/CommandLineTools\n", "")
    assert xcode.answer(["--print-path"], True)[0] == 0
    assert xcode.answer(["-p"], False)[0] == 2
    assert xcode.answer(["--install"], True)[0] == 1


def test_the_state_files_switch_filevault_and_the_command_line_tools(prefix: Path) -> None:
    state = prefix / "var/lib/vllama-macos-standin"
    state.mkdir(parents=True)
    (state / "filevault-on").touch()
    (state / "no-command-line-tools").touch()
    assert call("usr/bin/fdesetup", "status", prefix=prefix).stdout == "FileVault is On.\n"
    assert call("usr/bin/xcode-select", "-p", prefix=prefix).returncode == 2


# ------------------------------------------------------------------ pmset ---


def test_pmset_shows_its_settings_as_pmset_does() -> None:
    status, out, _, _ = pmset.answer(["-g"], dict(pmset.DEFAULTS), False)
    assert status == 0
    assert out.startswith("System-wide power settings:\nCurrently in use:\n"
                          " standby              0\n")
    assert " autorestart          0\n disksleep            10\n" in out
    assert out.endswith(" womp                 1\n")
    if (ROOT / "plugins/module_utils/vllama_launchd.py").exists():
        launchd = paths.load_plugin_file("module_utils/vllama_launchd.py", "vllama_launchd_t")
        assert launchd.parse_pmset(out)["sleep"] == "1"
    assert pmset.answer(["-g", "custom"], dict(pmset.DEFAULTS), False)[1].startswith("AC Power:\n")
    assert pmset.answer(["-g", "batt"], dict(pmset.DEFAULTS), False)[0] == 1


def test_pmset_changes_settings_as_root_only() -> None:
    before = dict(pmset.DEFAULTS)
    status, out, _, after = pmset.answer(["-a", "sleep", "0", "disksleep", "0", "autorestart",
                                          "5"], before, True)
    assert (status, out) == (0, "")
    assert (after["sleep"], after["disksleep"], after["autorestart"]) == (0, 0, 1)  # on/off
    assert pmset.answer(["-c", "SPINDOWN", "3"], before, True)[3]["disksleep"] == 3
    assert pmset.answer(["-b", "sleep", "0"], before, True)[3] == before  # no battery
    assert pmset.answer(["-a", "sleep", "0"], before, False, "/opt/r/usr/bin/pmset")[:2] == (
        1, "'/opt/r/usr/bin/pmset' must be run as root...\n")
    for bad in (["-a", "hibernatemode", "0"], ["-a", "sleep"], ["-a", "sleep", "-1"], []):
        assert pmset.answer(bad, before, True)[:2] == (1, pmset.USAGE)


def test_pmset_settings_survive_a_restart(prefix: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing pmset's settings needs root")
    assert call("usr/bin/pmset", "-a", "sleep", "0", prefix=prefix).returncode == 0
    shutil.rmtree(prefix / "run", ignore_errors=True)
    assert " sleep                0\n" in call("usr/bin/pmset", "-g", prefix=prefix).stdout


# ------------------------------------------------------------------ newsyslog ---


def role_like_config(logs: Path) -> str:
    """A configuration shaped like the role's (templates/launchd/vllama-newsyslog.conf.j2)."""
    lines = ["#", "# Ansible managed", "#",
             "# logfilename                                     [owner:group]  mode count size "
             "when flags"]
    lines += [f"{logs}/{stream}.log\troot:wheel\t640\t7\t10240\t*\tJN"
              for stream in ("stdout", "stderr")]
    return "\n".join(lines) + "\n"


def test_newsyslog_checks_and_dry_runs_a_role_like_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "vllama.conf"
    conf.write_text(role_like_config(tmp_path))
    (tmp_path / "stdout.log").write_bytes(b"x" * 5000)
    assert newsyslog.answer(["-n", "-f", str(conf)], True, 0) == (0, "", "")
    status, out, err = newsyslog.answer(["-nvf", str(conf)], True, 0)
    assert (status, err) == (0, "")
    size = newsyslog.kbytes(str(tmp_path / "stdout.log"))
    assert out == (f"{tmp_path}/stdout.log <7J>: size (Kb): {size} [10240] --> skipping\n"
                   f"{tmp_path}/stderr.log <7J>: does not exist, skipped.\n")
    assert newsyslog.answer(["-n", "-v", "-f", str(conf)], True, 0)[1] == out


def test_newsyslog_prints_what_it_would_rotate(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(os.urandom(8192))
    conf = tmp_path / "c.conf"
    conf.write_text(f"{log} 644 3 1 * Z\n{tmp_path}/gone.log 644 2 * 24 C\n")
    assert newsyslog.answer(["-n", "-f", str(conf)], True, 0)[1] == f"{log} <3Z>: trimming\n"
    out = newsyslog.answer(["-n", "-v", "-f", str(conf)], True, 0)[1]
    assert out == (f"{log} <3Z>: size (Kb): 8 [1] --> trimming log....\n"
                   f"{tmp_path}/gone.log <2>: does not exist, skipped (no -C option).\n")


@pytest.mark.parametrize(("line", "message"), [
    ("/var/log/x.log root:wheel 640 7 100 * JQ\n", "illegal flag in config file -- Q"),
    ("/var/log/x.log root:wheel 640\n", "missing field in config file:\n"),
    ("/var/log/x.log root:wheel 640 7", "malformed line (missing fields):\n"),
    ("/var/log/x.log nosuchuserhere:wheel 640 7 100 *\n", "unknown user:\n"),
    ("/var/log/x.log root:nosuchgrouphere 640 7 100 *\n", "unknown group:\n"),
    ("/var/log/x.log 9640 7 100 *\n", "bad permissions:\n"),
    ("/var/log/x.log 640 -1 100 *\n", "bad value for count of logs to save:\n"),
    ("/var/log/x.log 640 7 100 2x\n", "malformed interval/at:\n"),
    ("/var/log/x.log 640 7 100 @99X\n", "malformed 'at' value:\n"),
    ("/var/log/x.log 640 7 100 * J nopid\n", "illegal pid file or signal number"),
    ("/var/log/x.log 640 7 100 * J /var/run/x.pid 99\n", "illegal signal number"),
    ("x.log 640 7 100 * J\n", "not absolute"),
    ("   # indented comment\n", "missing field in config file:\n")])
def test_newsyslog_refuses_a_malformed_line(tmp_path: Path, line: str, message: str) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("# fine\n/var/log/ok.log 640 7 100 * N\n" + line)
    status, out, err = newsyslog.answer(["-n", "-f", str(conf)], True, 0)
    assert (status, out) == (1, "")
    assert err.startswith("newsyslog: ") and message in err
    if message.endswith(":\n"):  # newsyslog quotes the line after such a message
        assert err.endswith(f"{message}{line}\n")


def test_newsyslog_reads_every_documented_field() -> None:
    warnings: list[str] = []
    entry = newsyslog.parse_line("/var/log/a.log root:admin 0640 5 * $W0D23 BZ "
                                 "/var/run/a.pid 30 # rotate weekly\n", warnings.append)
    assert (entry["mode"], entry["count"], entry["size"], entry["at"]) == (0o640, 5, -1, "$W0D23")
    assert (entry["flags"], entry["pid_file"], entry["signal"]) == ("BZ", "/var/run/a.pid", 30)
    assert newsyslog.parse_line("/var/log/b 644 3 100 @T00 -\n", warnings.append)["at"] == "@T00"
    assert newsyslog.parse_line("/var/log/c 644 3 100 24 J 1\n", warnings.append)["signal"] == 1
    assert warnings == []
    assert newsyslog.parse_line("/var/log/d 644 3 big * N /x.pid\n", warnings.append)[
        "pid_file"] is None
    assert any("Invalid value of 'big'" in w for w in warnings)
    assert any("because flag 'n'" in w for w in warnings)
    assert newsyslog.parse_line("/var/log/e 644 3 1 * c\n", warnings.append)["flags"] == "G"


def test_newsyslog_needs_root_and_refuses_to_rotate(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("/var/log/ok.log 640 7 100 * N\n")
    assert newsyslog.answer(["-n", "-f", str(conf)], False, 0) == (
        1, "", "newsyslog: must have root privs\n")
    assert newsyslog.answer(["-n", "-r", "-f", str(conf)], False, 0)[0] == 0
    assert newsyslog.answer(["-f", str(conf)], True, 0)[0] == 1
    assert newsyslog.answer(["-n", "-f", str(tmp_path / "none")], True, 0)[0] == 1
    assert newsyslog.answer(["-x"], True, 0)[2].endswith(newsyslog.USAGE)


# ------------------------------------------------------------------ launchctl ---


def engine_job(tmp_path: Path) -> dict:
    """A job shaped like the role's engine plist (templates/vllama-engine.plist.j2)."""
    return {"Label": "org.vllama.smol", "ProgramArguments": [
        "/opt/vllama/venv/bin/llama-server", "--port", "8080", "--api-key-file", "/k"],
        "EnvironmentVariables": {"LLAMA_ARG_THREADS": "4", "HOME": str(tmp_path)},
        "UserName": "_vllama", "WorkingDirectory": str(tmp_path), "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False}, "ThrottleInterval": 30, "ExitTimeOut": 60,
        "ProcessType": "Standard", "SoftResourceLimits": {"NumberOfFiles": 65536},
        "StandardOutPath": f"{tmp_path}/stdout.log", "StandardErrorPath": f"{tmp_path}/stderr.log"}


def test_unit_names() -> None:
    assert launchctl.unit_name("org.vllama.smol-1_b:c") == "launchd-org.vllama.smol-1_b:c.service"
    assert launchctl.unit_name("a b/é") == "launchd-a\\x20b\\x2f\\xc3\\xa9.service"


def test_systemd_run_command_of_an_engine_job(tmp_path: Path) -> None:
    argv = launchctl.systemd_run_argv(engine_job(tmp_path), "/L/org.vllama.smol.plist",
                                      "/opt/r/bin/launchctl")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    assert options[0] == "/usr/bin/systemd-run"
    assert command == ["/opt/vllama/venv/bin/llama-server", "--port", "8080",
                       "--api-key-file", "/k"]
    for wanted in ("--unit=launchd-org.vllama.smol.service", "--service-type=exec", "--collect",
                   "--property=User=_vllama", f"--property=WorkingDirectory={tmp_path}",
                   f"--property=StandardOutput=append:{tmp_path}/stdout.log",
                   f"--property=StandardError=append:{tmp_path}/stderr.log",
                   "--property=TimeoutStopSec=60", "--property=KillMode=mixed",
                   "--property=Restart=on-failure", "--property=RestartSec=30",
                   "--property=StartLimitIntervalSec=0", "--property=LimitNOFILE=65536:524288",
                   "--property=ExecStopPost=+/opt/r/bin/launchctl --stand-in-exited",
                   "--setenv=LLAMA_ARG_THREADS=4", f"--setenv=HOME={tmp_path}",
                   "--setenv=XPC_SERVICE_NAME=org.vllama.smol",
                   "--setenv=PATH=/usr/bin:/bin:/usr/sbin:/sbin"):
        assert wanted in options, wanted
    assert not any(o.startswith("--property=Group=") for o in options)


def test_systemd_run_command_of_a_minimal_job() -> None:
    job = {"Label": "x", "Program": "/bin/true", "ProgramArguments": ["true", "-v"],
           "KeepAlive": True, "EnvironmentVariables": {"PATH": "/opt/bin"}}
    argv = launchctl.systemd_run_argv(job, "/L/x.plist", "/r/bin/launchctl")
    assert argv[argv.index("--") + 1:] == ["/bin/true", "-v"]
    for wanted in ("--property=Restart=always", "--property=RestartSec=10",
                   "--property=TimeoutStopSec=5", "--property=StandardOutput=null",
                   "--property=StandardError=null", "--setenv=PATH=/opt/bin"):
        assert wanted in argv, wanted
    assert not any("User=" in o or "LimitNOFILE" in o or "WorkingDirectory" in o for o in argv)


def as_unit_file(argv: list[str]) -> str:
    """The unit file equivalent to a systemd-run command (its properties, environment and
    command), for systemd-analyze verify: systemd parses both with the same property parsers."""
    split = argv.index("--")
    unit, service = [], ["Type=exec"]
    for option in argv[1:split]:
        if option.startswith("--property="):
            setting = option.removeprefix("--property=")
            (unit if setting.startswith("StartLimit") else service).append(setting)
        elif option.startswith("--setenv="):
            service.append('Environment="' + option.removeprefix("--setenv=") + '"')
        elif option.startswith("--description="):
            unit.append("Description=" + option.removeprefix("--description="))
    service.append("ExecStart=" + " ".join(shlex.quote(word) for word in argv[split + 1:]))
    return "[Unit]\n" + "\n".join(unit) + "\n\n[Service]\n" + "\n".join(service) + "\n"


def test_systemd_accepts_the_units_properties(tmp_path: Path) -> None:
    argv = launchctl.systemd_run_argv(engine_job(tmp_path), "/L/org.vllama.smol.plist",
                                      "/opt/r/bin/launchctl")
    text = as_unit_file(argv)
    assert "ExecStopPost=+/opt/r/bin/launchctl --stand-in-exited\n" in text
    programs = ["/opt/vllama/venv/bin/llama-server", "/opt/r/bin/launchctl"]
    assert validators.verify_systemd_unit(text, unit_name="launchd-org.vllama.smol.service",
                                          host_executables=programs) == []
    broken = text.replace("KillMode=mixed", "KillMode=gently")
    assert validators.verify_systemd_unit(broken, unit_name="launchd-org.vllama.smol.service",
                                          host_executables=programs) != []


def test_systemd_accepts_the_boot_unit() -> None:
    unit = next(entry for entry in install.files("/opt/vllama-macos")
                if entry["dest"].endswith("/vllama-macos-launchd-boot.service"))
    assert validators.verify_systemd_unit(
        unit["content"].decode(), unit_name="vllama-macos-launchd-boot.service",
        host_executables=["/opt/vllama-macos/bin/launchctl"]) == []


@pytest.mark.parametrize(("keep_alive", "policy"), [
    (None, "no"), (False, "no"), (True, "always"), ({"SuccessfulExit": False}, "on-failure"),
    ({"SuccessfulExit": True}, "on-success"), ({"Crashed": True}, "on-abnormal"),
    ({"PathState": {"/x": True}}, "no")])
def test_keep_alive_as_a_restart_policy(keep_alive: object, policy: str) -> None:
    assert launchctl.restart_policy(keep_alive) == policy


@pytest.mark.parametrize(("last", "line"), [
    (None, "last exit code = (never exited)"), ({"kind": "exit", "value": 0}, "last exit code = 0"),
    ({"kind": "exit", "value": 78}, "last exit code = 78: EX_CONFIG"),
    ({"kind": "exit", "value": 1}, "last exit code = 1: Operation not permitted"),
    ({"kind": "exit", "value": 127}, "last exit code = 127"),
    ({"kind": "signal", "value": 15}, "last terminating signal = Terminated: 15"),
    ({"kind": "signal", "value": 9}, "last terminating signal = Killed: 9")])
def test_last_exit_as_launchd_says_it(last: dict | None, line: str) -> None:
    assert launchctl.exit_line(last) == line


# The job block's keys in the order launchctl print gives them for a system daemon (running,
# then loaded and not running), as in recorded outputs of real Macs.
RUNNING_KEYS = ["active count", "path", "type", "state", "program", "arguments",
                "working directory", "stdout path", "stderr path", "default environment",
                "environment", "domain", "username", "minimum runtime", "exit timeout", "runs",
                "pid", "immediate reason", "forks", "execs", "initialized", "trampolined",
                "started suspended", "proxy started suspended", "last exit code", "semaphores",
                "spawn type", "resource limits", "properties"]


def keys_of(text: str) -> list[str]:
    lines = text.splitlines()
    assert lines[0].endswith(" = {") and lines[-1] == "}"
    top = [line[1:] for line in lines[1:-1] if line.startswith("\t") and line[1:2] != "\t"]
    return [line.split(" = ")[0] for line in top if " = " in line]


def test_print_of_a_running_engine(tmp_path: Path) -> None:
    job = engine_job(tmp_path)
    text = launchctl.format_print(job, "/Library/LaunchDaemons/org.vllama.smol.plist",
                                  {"state": "running", "pid": 4242}, {"exits": 0, "last": None})
    assert keys_of(text) == RUNNING_KEYS
    assert text.startswith("system/org.vllama.smol = {\n\tactive count = 1\n\tpath = /Library/")
    assert "\targuments = {\n\t\t/opt/vllama/venv/bin/llama-server\n\t\t--port\n\t\t8080\n" in text
    assert "\tenvironment = {\n\t\tLLAMA_ARG_THREADS => 4\n" in text
    assert "\t\tXPC_SERVICE_NAME => org.vllama.smol\n\t}\n\n\tdomain = system\n" in text
    assert "\tusername = _vllama\n\tminimum runtime = 30\n\texit timeout = 60\n\truns = 1\n" in text
    assert "\tsemaphores = {\n\t\tsuccessful exit => 0\n\t}\n" in text
    assert "\tresource limits = {\n\t\tmaxfiles (soft) => 65536\n\t}\n" in text
    assert text.endswith("\tproperties = runatload | inferred program\n}\n")
    if (ROOT / "plugins/module_utils/vllama_launchd.py").exists():
        launchd = paths.load_plugin_file("module_utils/vllama_launchd.py", "vllama_launchd_t")
        parsed = launchd.parse_print(text)
        assert (parsed["state"], parsed["pid"], parsed["runs"]) == ("running", 4242, 1)
        assert parsed["last_exit_code"] is None
        assert parsed["arguments"] == job["ProgramArguments"]


def test_print_of_a_job_that_exited_or_waits_for_its_restart(tmp_path: Path) -> None:
    job = {"Label": "org.vllama.wired-limit", "ProgramArguments": ["/r/usr/sbin/sysctl", "x=1"],
           "RunAtLoad": True, "KeepAlive": True}
    text = launchctl.format_print(job, "/L/w.plist", {"state": "not running", "pid": 0},
                                  {"exits": 2, "last": {"kind": "exit", "value": 1}})
    assert keys_of(text) == ["active count", "path", "type", "state", "program", "arguments",
                             "default environment", "environment", "domain", "minimum runtime",
                             "exit timeout", "runs", "last exit code", "spawn type",
                             "properties"]
    assert "\tactive count = 0\n" in text and "\truns = 2\n" in text
    assert "\tlast exit code = 1: Operation not permitted\n" in text
    assert "keepalive | runatload | inferred program" in text
    waiting = launchctl.format_print(job, "/L/w.plist", {"state": "spawn scheduled", "pid": 0},
                                     {"exits": 3, "last": {"kind": "signal", "value": 9}})
    assert "\tstate = spawn scheduled\n" in waiting
    assert "\tlast terminating signal = Killed: 9\n" in waiting


RECORDED = ROOT / "tests" / "fixtures" / "macos"  # real outputs, sources in SOURCES.md


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()  # a missing recording fails the test


def layout(text: str, keys: set[str]) -> list[str]:
    """The job block's lines reduced to the keys in ``keys`` and its blank lines ('')."""
    kept = []
    for line in text.splitlines()[1:-1]:
        key = line.strip().split(" = ")[0]
        if not line.strip():
            kept.append("")
        elif line.startswith("\t") and line[1] != "\t" and key in keys:
            kept.append(key)
    return [k for i, k in enumerate(kept) if k or (i and kept[i - 1])]


def test_print_lays_its_lines_out_as_a_mac_does(tmp_path: Path) -> None:
    real = recorded("launchctl-print-system-daemon-running.txt")
    job = {**engine_job(tmp_path), "KeepAlive": True}
    del job["WorkingDirectory"], job["StandardOutPath"], job["StandardErrorPath"]
    del job["UserName"], job["RunAtLoad"]
    ours = launchctl.format_print(job, "/Library/LaunchDaemons/org.vllama.smol.plist",
                                  {"state": "running", "pid": 383}, {"exits": 0, "last": None})
    # The same keys in the same order, blank lines and tabs included, where both print one.
    shared = set(keys_of(ours)) & set(keys_of(real))
    assert [k for k in keys_of(ours) if k in shared] == [k for k in keys_of(real) if k in shared]
    assert set(keys_of(ours)) - shared == set()
    assert layout(ours, shared) == layout(real, shared)


def test_pmset_and_system_profiler_print_as_a_mac_does() -> None:
    real = recorded("pmset-g-hackintosh.txt").splitlines()
    ours = pmset.answer(["-g"], dict(pmset.DEFAULTS), False)[1].splitlines()
    assert ours[:2] == real[:2]
    for name in ("standby", "womp", "powernap", "disksleep", "ttyskeepawake", "tcpkeepalive"):
        assert next(line for line in ours if line.split()[0] == name)[:22] == \
            next(line for line in real if line.split()[0] == name)[:22]
    text = recorded("system_profiler-displays-m5.json")
    real_gpu = json.loads(text)["SPDisplaysDataType"][0]
    our_gpu = json.loads(profiler.answer(["SPDisplaysDataType", "-json"])[1])[
        "SPDisplaysDataType"][0]
    assert set(our_gpu) == set(real_gpu) - {"spdisplays_ndrvs"}
    assert {k: v for k, v in our_gpu.items() if k.endswith(("_bus", "_type", "vendor"))} == \
        {k: v for k, v in real_gpu.items() if k.endswith(("_bus", "_type", "vendor"))}
    assert json.dumps(json.loads(text), indent=2, sort_keys=True,
                      separators=(",", " : ")) == text.rstrip("\n")


class FakeSystemd:
    """systemd as the unit tests imagine it: units come and go with systemd-run and stop."""

    def __init__(self) -> None:
        self.units: dict[str, dict] = {}
        self.commands: list[list[str]] = []
        self.next_pid = 100

    def call(self, argv: list[str]) -> tuple[int, str, str]:
        self.commands.append(argv)
        if argv[0] == launchctl.SYSTEMD_RUN:
            unit = argv[1].removeprefix("--unit=")
            self.next_pid += 1
            self.units[unit] = {"LoadState": "loaded", "ActiveState": "active",
                                "SubState": "running", "MainPID": str(self.next_pid)}
        return 0, "", ""

    def show(self, unit: str) -> dict:
        return self.units.get(unit, {"LoadState": "not-found", "ActiveState": "inactive",
                                     "SubState": "dead", "MainPID": "0"})

    def systemctl(self, *words: str) -> int:
        self.commands.append([launchctl.SYSTEMCTL, *words])
        verb, unit = words
        if verb == "stop":
            self.units.pop(unit, None)
        elif verb == "restart":
            if unit not in self.units:
                return 5
            self.next_pid += 1
            self.units[unit].update(ActiveState="active", SubState="running",
                                    MainPID=str(self.next_pid))
        return 0


@pytest.fixture
def daemons(tmp_path: Path, prefix: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A LaunchDaemons folder with the engine's plist (owned by root, 0644), launchctl as root."""
    if os.geteuid() != 0:
        pytest.skip("launchd accepts only plists owned by root")
    monkeypatch.setattr(launchctl.standin, "is_root", lambda: True)
    folder = tmp_path / "LaunchDaemons"
    folder.mkdir()
    plist = folder / "org.vllama.smol.plist"
    plist.write_bytes(plistlib.dumps(engine_job(tmp_path)))
    plist.chmod(0o644)
    return folder


def run(systemd: FakeSystemd, *argv: str) -> tuple[int, str, str]:
    try:
        return 0, launchctl.dispatch(list(argv), systemd), ""
    except launchctl.Failure as failure:
        return failure.status, "", "\n".join(failure.lines)


def test_a_job_bootstrapped_printed_kickstarted_and_booted_out(daemons: Path,
                                                              prefix: Path) -> None:
    systemd, plist = FakeSystemd(), str(daemons / "org.vllama.smol.plist")
    unit = "launchd-org.vllama.smol.service"
    assert run(systemd, "bootstrap", "system", plist) == (0, "", "")
    run_dir = prefix / "run/vllama-macos-standin"
    assert (run_dir / "loaded/org.vllama.smol").read_text() == plist
    assert systemd.commands[-1][:2] == [launchctl.SYSTEMD_RUN, f"--unit={unit}"]
    assert systemd.commands[-1][-5:] == engine_job(Path(plist).parents[1])["ProgramArguments"]
    assert run(systemd, "bootstrap", "system", plist) == (
        5, "", "Bootstrap failed: 5: Input/output error")

    status, out, _ = run(systemd, "print", "system/org.vllama.smol")
    assert status == 0 and "\tstate = running\n" in out and "\tpid = 101\n" in out
    # launchd answers from the job it loaded, not from a plist changed since
    Path(plist).write_bytes(plistlib.dumps({**engine_job(daemons), "ProgramArguments": ["/x"]}))
    assert "\t\t--port\n" in run(systemd, "print", "system/org.vllama.smol")[1]

    assert run(systemd, "kickstart", "-p", "system/org.vllama.smol")[:2] == (0, "101\n")
    assert run(systemd, "kickstart", "-kp", "system/org.vllama.smol")[:2] == (0, "102\n")
    assert [launchctl.SYSTEMCTL, "restart", unit] in systemd.commands
    systemd.units.clear()  # the job exited and systemd collected its unit
    assert run(systemd, "kickstart", "-k", "-p", "system/org.vllama.smol")[:2] == (0, "103\n")
    assert systemd.commands[-1][0] == launchctl.SYSTEMD_RUN
    assert "--port" in systemd.commands[-1]  # started again from the job as it was loaded

    assert run(systemd, "bootout", "system/org.vllama.smol") == (0, "", "")
    assert systemd.commands[-2:] == [[launchctl.SYSTEMCTL, "stop", unit],
                                     [launchctl.SYSTEMCTL, "reset-failed", unit]]
    assert not (run_dir / "loaded/org.vllama.smol").exists()
    assert run(systemd, "bootout", "system/org.vllama.smol") == (
        3, "", "Boot-out failed: 3: No such process")
    assert run(systemd, "print", "system/org.vllama.smol") == (
        113, "", 'Bad request.\nCould not find service "org.vllama.smol" in domain for system')
    assert run(systemd, "kickstart", "-k", "system/org.vllama.smol") == (
        113, "", 'Could not find service "org.vllama.smol" in domain for system')


class LingeringSystemd(FakeSystemd):
    """A systemd still holding the unit a bootout stopped for a few questions (not collected
    yet), then letting go of it."""

    def __init__(self, unit: str, questions: int) -> None:
        super().__init__()
        self.units[unit] = {"LoadState": "loaded", "ActiveState": "inactive",
                            "SubState": "dead", "MainPID": "0"}
        self.lingering, self.questions = unit, questions

    def show(self, unit: str) -> dict:
        self.questions -= 1
        if self.questions < 0:
            self.units.pop(self.lingering, None)
        return super().show(unit)


def test_a_new_bootstrap_builds_a_new_unit_once_systemd_let_go_of_the_old_one(
        daemons: Path) -> None:
    # Never the old unit restarted as it was (the plist may have changed since): launchctl
    # waits for systemd to collect it, then builds a new one from the plist.
    unit = "launchd-org.vllama.smol.service"
    systemd = LingeringSystemd(unit, questions=3)
    assert run(systemd, "bootstrap", "system", str(daemons / "org.vllama.smol.plist"))[0] == 0
    assert [c[1] for c in systemd.commands] == ["reset-failed", f"--unit={unit}"]


def test_bootout_by_plist_path_and_a_job_without_run_at_load(daemons: Path) -> None:
    systemd = FakeSystemd()
    plist = daemons / "lazy.plist"
    plist.write_bytes(plistlib.dumps({"Label": "lazy", "ProgramArguments": ["/bin/sleep", "9"]}))
    plist.chmod(0o644)
    assert run(systemd, "bootstrap", "system", str(plist))[0] == 0
    assert systemd.commands == []  # loaded, not started
    out = run(systemd, "print", "system/lazy")[1]
    assert "\tstate = not running\n" in out and "\truns = 0\n" in out
    assert "\tlast exit code = (never exited)\n" in out
    assert run(systemd, "bootout", "system", str(plist))[0] == 0
    assert run(systemd, "bootout", "system", str(plist))[0] == 3


def test_launchd_refuses_what_it_refuses(daemons: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    systemd, plist = FakeSystemd(), daemons / "org.vllama.smol.plist"
    assert run(systemd, "bootstrap", "system", str(daemons / "none.plist"))[::2] == (
        2, "Bootstrap failed: 2: No such file or directory")
    plist.chmod(0o664)
    status, _, err = run(systemd, "bootstrap", "system", str(plist))
    assert status == 5 and err.splitlines() == [
        "Bootstrap failed: 5: Input/output error",
        f"{plist}: Path had bad ownership/permissions"]
    plist.chmod(0o644)
    broken = daemons / "broken.plist"
    broken.write_bytes(plistlib.dumps({"Label": "broken"}))
    broken.chmod(0o644)
    assert run(systemd, "bootstrap", "system", str(broken))[0] == 5
    assert run(systemd, "bootstrap", "gui/501", str(plist))[0] == 64
    assert run(systemd, "print", "gui/501/org.vllama.smol")[0] == 64
    assert run(systemd, "print", "nonsense")[0] == 64
    assert run(systemd, "kickstart", "-x", "system/a")[0] == 64
    assert run(systemd, "list")[::2] == (64, "Unrecognized subcommand: list\n(The vllama macOS "
                                             "stand-in imitates: " + ", ".join(launchctl.USAGE)
                                         + ".)")
    monkeypatch.setattr(launchctl.standin, "is_root", lambda: False)
    assert run(systemd, "bootstrap", "system", str(plist))[::2] == (
        1, "Bootstrap failed: 1: Operation not permitted")
    assert run(systemd, "disable", "system/org.vllama.smol")[::2] == (
        1, "Could not disable service: 1: Operation not permitted")


def test_disabled_jobs_are_not_bootstrapped(daemons: Path, prefix: Path) -> None:
    systemd, plist = FakeSystemd(), str(daemons / "org.vllama.smol.plist")
    assert run(systemd, "disable", "system/org.vllama.smol")[0] == 0
    assert run(systemd, "print-disabled", "system")[1] == \
        'disabled services = {\n\t"org.vllama.smol" => disabled\n}\n'
    assert run(systemd, "bootstrap", "system", plist) == (
        119, "", "Bootstrap failed: 119: Service is disabled")
    assert (prefix / "var/lib/vllama-macos-standin/launchd-overrides.json").exists()
    assert run(systemd, "enable", "system/org.vllama.smol")[0] == 0
    assert run(systemd, "print-disabled", "system")[1] == \
        'disabled services = {\n\t"org.vllama.smol" => enabled\n}\n'
    assert run(systemd, "bootstrap", "system", plist)[0] == 0


def test_each_exit_is_recorded_for_print(daemons: Path) -> None:
    systemd, plist = FakeSystemd(), str(daemons / "org.vllama.smol.plist")
    run(systemd, "bootstrap", "system", plist)
    env = {"XPC_SERVICE_NAME": "org.vllama.smol"}
    launchctl.record_exit({**env, "EXIT_CODE": "killed", "EXIT_STATUS": "TERM"})
    launchctl.record_exit({**env, "EXIT_CODE": "exited", "EXIT_STATUS": "203"})
    launchctl.record_exit({"XPC_SERVICE_NAME": "not.loaded", "EXIT_CODE": "exited"})
    systemd.units["launchd-org.vllama.smol.service"].update(
        ActiveState="activating", SubState="auto-restart", MainPID="0")
    out = run(systemd, "print", "system/org.vllama.smol")[1]
    assert "\tstate = spawn scheduled\n" in out and "\truns = 2\n" in out
    assert "\tlast exit code = 78: EX_CONFIG\n" in out
    launchctl.record_exit({**env, "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"})
    assert "\tlast terminating signal = Killed: 9\n" in run(systemd, "print",
                                                            "system/org.vllama.smol")[1]


def test_boot_loads_every_daemon_that_is_not_disabled(daemons: Path, prefix: Path) -> None:
    systemd = FakeSystemd()
    other = daemons / "org.vllama.wired-limit.plist"
    other.write_bytes(plistlib.dumps({"Label": "org.vllama.wired-limit", "RunAtLoad": True,
                                      "ProgramArguments": ["/r/usr/sbin/sysctl", "a=1"]}))
    other.chmod(0o644)
    (daemons / "not-a-plist.plist").write_text("nonsense")
    (daemons / "not-a-plist.plist").chmod(0o644)
    run(systemd, "disable", "system/org.vllama.wired-limit")
    launchctl.boot(systemd, daemons)
    loaded = sorted(p.name for p in (prefix / "run/vllama-macos-standin/loaded").iterdir())
    assert loaded == ["org.vllama.smol"]
    log = (prefix / "var/log/vllama-macos-standin/launchctl.log").read_text()
    assert "Service is disabled" in log and "not-a-plist.plist" in log
    assert "bootstrapped " + str(daemons / "org.vllama.smol.plist") in log


def test_launchctl_as_a_program_without_systemd(prefix: Path) -> None:
    done = call("bin/launchctl", "print", "system/org.vllama.none", prefix=prefix)
    assert (done.returncode, done.stdout) == (113, "")
    assert done.stderr == ('Bad request.\n'
                           'Could not find service "org.vllama.none" in domain for system\n')
    assert call("bin/launchctl", "frobnicate", prefix=prefix).returncode == 64
    assert call("bin/launchctl", "print-disabled", "system", prefix=prefix).stdout == \
        "disabled services = {\n}\n"
    assert calls(prefix)[0]["argv"] == ["print", "system/org.vllama.none"]
