"""The strategy choice: version ranges, forced choices, a missing Mitogen, the environment."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.version import Version

from vllama_provision import strategy
from vllama_provision.errors import UsageError
from vllama_provision.runner import RunRequest, ansible_env
from vllama_provision.strategy import LINEAR, Installed, choose, supported_core

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    folder = tmp_path / "ansible_mitogen" / "plugins" / "strategy"
    folder.mkdir(parents=True)
    (folder / "mitogen_linear.py").write_text("# stand-in\n")
    return folder


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLAMA_STRATEGY", raising=False)


def found(plugins: Path, mitogen: str | None = "0.3.54", core: str = "2.19.14") -> Installed:
    return Installed(mitogen=mitogen, ansible_core=core, plugins=plugins if mitogen else None)


def test_default_is_linear_and_needs_nothing() -> None:
    assert choose(None, Installed(None, None, None)) is LINEAR
    assert choose("linear", Installed(None, None, None)) is LINEAR
    assert LINEAR.env() == {"ANSIBLE_STRATEGY": "linear"}


def test_the_environment_variable_is_the_default(monkeypatch: pytest.MonkeyPatch,
                                                 plugins: Path) -> None:
    monkeypatch.setenv("VLLAMA_STRATEGY", "auto")
    assert choose(None, found(plugins)).name == "mitogen"
    assert choose("linear", found(plugins)).name == "linear"  # the flag wins
    monkeypatch.setenv("VLLAMA_STRATEGY", "fastest")
    with pytest.raises(UsageError, match="unknown strategy 'fastest'"):
        choose(None, found(plugins))


def test_auto_takes_a_tested_mitogen_on_a_supported_core(plugins: Path) -> None:
    chosen = choose("auto", found(plugins))
    assert chosen.name == "mitogen" and chosen.ansible_name == "mitogen_linear"
    assert chosen.env() == {"ANSIBLE_STRATEGY": "mitogen_linear",
                            "ANSIBLE_STRATEGY_PLUGINS": str(plugins),
                            "VLLAMA_QUIET_STRATEGY_DEPRECATION": "1"}


@pytest.mark.parametrize(("mitogen", "core", "why"), [
    (None, "2.19.14", "not installed"),
    ("0.3.53", "2.19.14", "outside the tested range"),
    ("0.3.55", "2.19.14", "outside the tested range"),
    ("0.4.0", "2.19.14", "outside the tested range"),
    ("0.3.54", "2.22.0", "supports ansible-core 2.10 to below 2.22"),
    ("0.3.54", "2.9.27", "supports ansible-core 2.10 to below 2.22"),
])
def test_auto_falls_back_to_linear(plugins: Path, mitogen: str | None, core: str,
                                   why: str) -> None:
    chosen = choose("auto", found(plugins, mitogen, core))
    assert chosen.name == "linear" and why in chosen.why
    assert chosen.env() == {"ANSIBLE_STRATEGY": "linear"}


def test_mitogen_forced_without_mitogen_is_a_clear_usage_error() -> None:
    with pytest.raises(UsageError) as err:
        choose("mitogen", Installed(None, "2.19.14", None))
    assert err.value.exit_code == 2
    assert "Mitogen is not installed" in str(err.value)
    assert "vllama-provision[mitogen]" in str(err.value)


def test_mitogen_forced_on_an_unsupported_core_is_refused(plugins: Path) -> None:
    with pytest.raises(UsageError, match=r"Mitogen 0\.3\.30 supports ansible-core 2\.10 to "
                                         r"below 2\.20; this is ansible-core 2\.20\.1"):
        choose("mitogen", found(plugins, "0.3.30", "2.20.1"))


def test_mitogen_forced_outside_the_tested_range_runs_with_a_warning(plugins: Path) -> None:
    chosen = choose("mitogen", found(plugins, "0.3.50", "2.19.3"))
    assert chosen.name == "mitogen"
    assert "outside the tested range" in chosen.warning
    assert choose("mitogen", found(plugins)).warning == ""


def test_a_missing_plugin_file_counts_as_not_installed(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not installed"):
        choose("mitogen", Installed("0.3.54", "2.19.14", tmp_path))


@pytest.mark.parametrize(("mitogen", "below"), [
    ("0.3.24", "2.19"), ("0.3.25", "2.20"), ("0.3.32", "2.20"), ("0.3.33", "2.21"),
    ("0.3.48", "2.21"), ("0.3.49", "2.22"), ("0.3.54", "2.22"), ("0.2.10", "2.19"),
])
def test_mitogens_supported_core_ranges(mitogen: str, below: str) -> None:
    assert supported_core(Version(mitogen)) == (Version("2.10"), Version(below))


def test_the_tested_range_matches_the_extra() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    pins = {line.split("==")[1].strip('",] ') for line in text.splitlines()
            if '"mitogen==' in line}
    assert pins and all(pin in strategy.TESTED_MITOGEN for pin in pins), pins


def test_ansible_env_carries_the_strategy(plugins: Path) -> None:
    assert ansible_env()["ANSIBLE_STRATEGY"] == "linear"
    env = ansible_env(choose("mitogen", found(plugins)))
    assert env["ANSIBLE_STRATEGY"] == "mitogen_linear"
    assert env["ANSIBLE_STRATEGY_PLUGINS"] == str(plugins)
    assert RunRequest(playbook="x", inventory=Path("i"), command="c").strategy is LINEAR


def test_this_controllers_mitogen_is_found_without_importing_it() -> None:
    if importlib.util.find_spec("ansible_mitogen") is None:
        if os.environ.get("CI") == "true":  # the test extra installs it: CI must run this
            pytest.fail("mitogen is not installed, although the test extra requires it")
        pytest.skip("mitogen is not installed here (pip install -e '.[test]')")
    here = strategy.installed()
    assert here.mitogen and here.plugins and (here.plugins / "mitogen_linear.py").is_file()
    assert "ansible_mitogen" not in sys.modules


def test_the_deprecation_text_is_ansible_cores_own() -> None:
    """The callback drops exactly this message: it must still be what ansible-core says, and
    the callback (which does not import the package) must carry the same text and variable."""
    loader = Path(importlib.util.find_spec("ansible").origin).parent / "plugins" / "loader.py"
    assert strategy.DEPRECATION_TEXT in loader.read_text()
    callback = (ROOT / "plugins" / "callback" / "vllama_quiet_strategy.py").read_text()
    assert f'DEPRECATION_TEXT = "{strategy.DEPRECATION_TEXT}"' in callback
    assert f'QUIET_ENV = "{strategy.QUIET_ENV}"' in callback
    assert "vllama.provision.vllama_quiet_strategy" in (ROOT / "ansible.cfg").read_text()


def test_the_cli_refuses_a_forced_mitogen_that_cannot_run(tmp_path: Path) -> None:
    """Exit 2 with the reason, before the inventory is even read (here: Mitogen hidden)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.metadata as m, importlib.util as u\n"
        "_v, _f = m.version, u.find_spec\n"
        "def version(d):\n"
        "    if d == 'mitogen': raise m.PackageNotFoundError(d)\n"
        "    return _v(d)\n"
        "def find_spec(n, *a):\n"
        "    return None if n == 'ansible_mitogen' else _f(n, *a)\n"
        "m.version, u.find_spec = version, find_spec\n")
    proc = subprocess.run([sys.executable, "-m", "vllama_provision.cli", "verify",
                           str(tmp_path / "none.yml"), "--strategy", "mitogen"],
                          capture_output=True, text=True, cwd=ROOT, check=False,
                          env={"PYTHONPATH": f"{hide}:{ROOT}", "PATH": "/usr/bin:/bin",
                               "NO_COLOR": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "--strategy mitogen: Mitogen is not installed" in proc.stderr


def test_kill_tree_reaches_processes_in_sessions_of_their_own() -> None:
    """The watchdog's kill: ansible-core 2.19 workers and Mitogen's SSH clients call setsid(),
    so a process-group kill misses them; kill_tree follows parent links instead."""
    from vllama_provision.procs import descendants, kill_tree, process_alive

    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, time\n"
                               "subprocess.Popen(['setsid', 'sleep', '300'])\n"
                               "time.sleep(300)\n"])
    try:
        deadline = time.monotonic() + 10
        while not descendants(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        below = descendants(parent.pid)
        assert below and os.getsid(below[0]) != os.getsid(parent.pid)
        kill_tree(parent.pid)
        time.sleep(0.2)
        assert not any(process_alive(p) for p in below)
        assert process_alive(parent.pid)  # the process itself is left alone
    finally:
        parent.kill()
        parent.wait()
