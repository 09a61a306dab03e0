"""Real lab hosts: boot, Ansible as root and with become, systemd, reboot, pause, teardown;
the tool's plays under Mitogen, and the watchdog stopping a Mitogen run whose CLI was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from labtools import ANSIBLE_ENV, BIN, ansible, explain, leftovers, playbook

from vllama_provision.lab import host as lab_host
from vllama_provision.lab.handle import Lab, LabHost
from vllama_provision.runner import ansible_env
from vllama_provision.strategy import choose

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def trio(lab_factory_module) -> Lab:
    """Three hosts with a sudo user, shared by the tests that do not disturb each other."""
    return lab_factory_module(3, user="alice")


def test_three_hosts_boot_with_their_own_addresses(trio: Lab) -> None:
    assert [h.name for h in trio.hosts] == [f"{trio.name}-{i}" for i in (1, 2, 3)]
    assert len({h.address for h in trio.hosts}) == 3
    for h in trio.hosts:
        assert h.address.startswith("127.0.1.")
        name, running = h.ssh("hostname; systemctl is-system-running --wait").stdout.split()
        assert name == h.name
        assert running == "running"
        assert _sshd_listens_on(h) == [f"{h.address}:22"]


def _sshd_listens_on(h: LabHost) -> list[str]:
    """Where the host's own sshd listens (hosts share the machine's network namespace, so
    `ss` also lists other hosts' sockets; only the host's own processes are named)."""
    out = h.ssh("ss -Hltnp").stdout.splitlines()
    return sorted(line.split()[3] for line in out if '"sshd"' in line)


def test_ansible_ping_as_root(trio: Lab) -> None:
    proc = ansible(trio.inventory_path, "all", "-m", "ansible.builtin.ping")
    assert proc.returncode == 0, explain(proc)
    for h in trio.hosts:
        assert f"{h.name} | SUCCESS" in proc.stdout


def test_ansible_ping_as_sudo_user_with_become(trio: Lab, tmp_path: Path) -> None:
    hostvars = yaml.safe_load(trio.inventory_path.read_text())["all"]["hosts"]
    assert {v["vllama_lab_become_user"] for v in hostvars.values()} == {"alice"}
    play = tmp_path / "become.yml"
    play.write_text(yaml.safe_dump([{
        "hosts": "all", "gather_facts": False,
        "vars": {"ansible_user": "{{ vllama_lab_become_user }}"},
        "tasks": [
            {"name": "Ping with become.", "ansible.builtin.ping": {}, "become": True},
            {"name": "Who am I.", "ansible.builtin.command": "id -un", "register": "plain",
             "changed_when": False},
            {"name": "Who am I with become.", "ansible.builtin.command": "id -un",
             "register": "sudo", "become": True, "changed_when": False},
            {"name": "Check.", "ansible.builtin.assert": {"that": [
                "plain.stdout == 'alice'", "sudo.stdout == 'root'"]}},
        ]}]))
    proc = playbook(trio.inventory_path, play)
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.count("ok=4") == 3, explain(proc)


def _mitogen_env() -> dict[str, str]:
    """What the CLI gives ansible-playbook with --strategy mitogen (deprecation warnings on, so
    that the one the tool hides would show)."""
    env = {**os.environ, **ANSIBLE_ENV, **ansible_env(choose("mitogen"))}
    env.pop("ANSIBLE_DEPRECATION_WARNINGS")
    env.pop("VLLAMA_CLI_PID")
    return env


def test_plays_run_under_mitogen_with_become_through_a_sudo_user(trio: Lab,
                                                                  tmp_path: Path) -> None:
    play = tmp_path / "mitogen.yml"
    play.write_text(yaml.safe_dump([{
        "hosts": "all", "gather_facts": False,
        "vars": {"ansible_user": "{{ vllama_lab_become_user }}"},
        "tasks": [
            # Under Mitogen a task runs inside its persistent interpreter on the host, named
            # "python3(mitogen:USER@CONTROLLER:PID)"; stock Ansible starts a fresh python3.
            {"name": "Name the process the task runs in.", "ansible.builtin.shell":
                "tr '\\0' ' ' < /proc/$PPID/cmdline", "register": "parent",
             "changed_when": False},
            {"name": "Who am I with become.", "ansible.builtin.command": "id -un",
             "register": "sudo", "become": True, "changed_when": False},
            {"name": "Check.", "ansible.builtin.assert": {"that": [
                "'(mitogen:' in parent.stdout", "sudo.stdout == 'root'"]}},
        ]}]))
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(trio.inventory_path),
                           str(play)], capture_output=True, text=True, timeout=300,
                          env=_mitogen_env(), check=False)
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.count("ok=3") == 3, explain(proc)
    assert "DEPRECATION" not in proc.stdout + proc.stderr, explain(proc)

    # The tool's own facts play (become: true), one host through a sudo login.
    data = yaml.safe_load(trio.inventory_path.read_text())
    first = trio.hosts[0].name
    data["all"]["hosts"][first].update({"ansible_user": "alice", "ansible_become": True})
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(data))
    report = tmp_path / "facts.json"
    cli = subprocess.run([sys.executable, "-m", "vllama_provision.cli", "facts", str(inventory),
                          "--strategy", "mitogen", "--json", str(report)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
                         env={**os.environ, "NO_COLOR": "1"})
    assert cli.returncode == 0, explain(cli)
    assert cli.stderr.startswith("strategy: mitogen_linear (--strategy mitogen; Mitogen "), \
        cli.stderr
    hosts = json.loads(report.read_text())["hosts"]
    assert {h: e["status"] for h, e in hosts.items()} == {h.name: "ok" for h in trio.hosts}
    for h in trio.hosts:
        assert f"{h.name}: Debian 12" in cli.stdout, cli.stdout


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


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.parametrize("strategy", ["linear", "mitogen"])
def test_the_watchdog_stops_a_run_whose_cli_was_killed(trio: Lab, tmp_path: Path,
                                                       strategy: str) -> None:
    """The CLI's pid is watched by the vllama_watchdog callback, which kills ansible-playbook's
    process group: Mitogen's multiplexer is in it; its SSH clients (in sessions of their own)
    end with the multiplexer, and the host's Mitogen interpreter ends with its connection."""
    h = trio.hosts[0]
    play = tmp_path / "sleep.yml"
    play.write_text(yaml.safe_dump([{
        "hosts": h.name, "gather_facts": False,
        "tasks": [{"name": "Sleep.", "ansible.builtin.command": "sleep 246",
                   "changed_when": False}]}]))
    # A stand-in for the CLI: ansible-runner as run_playbook drives it, with the environment
    # run_playbook gives it (VLLAMA_CLI_PID is this process).
    driver = tmp_path / "cli.py"
    (tmp_path / "run").mkdir()
    driver.write_text(
        "import ansible_runner\n"
        "from vllama_provision.runner import ansible_env\n"
        "from vllama_provision.strategy import choose\n"
        f"ansible_runner.run(private_data_dir={str(tmp_path / 'run')!r}, playbook={str(play)!r},"
        f" inventory={str(trio.inventory_path)!r}, envvars=ansible_env(choose({strategy!r})),"
        " quiet=True, suppress_env_files=True)\n")
    log = (tmp_path / "cli.log").open("w")
    cli = subprocess.Popen([sys.executable, str(driver)], cwd=ROOT, env=os.environ,
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and cli.poll() is None:
            if h.ssh("pgrep -fx 'sleep 246'", check=False).returncode == 0:
                break
            time.sleep(0.5)
        assert cli.poll() is None, ("the run ended before its task started: "
                                    + (tmp_path / "cli.log").read_text()[-3000:])
        mitogen_on_host = h.ssh("pgrep -f '[(]mitogen:'", check=False).returncode == 0
        assert mitogen_on_host == (strategy == "mitogen")
        run = _descendants(cli.pid)
        kinds = " | ".join(_cmdline(p) for p in run)
        assert "ansible-playbook" in kinds and "ssh" in kinds, kinds
        os.kill(cli.pid, signal.SIGKILL)  # the CLI alone, as `kill -9` would
        cli.wait()
        deadline = time.monotonic() + 15  # the watchdog checks every second
        alive = run
        while alive and time.monotonic() < deadline:
            time.sleep(0.5)
            # An SSH ControlPersist master ("[mux]") outlives any run by design.
            alive = [p for p in run if _cmdline(p) and "[mux]" not in _cmdline(p)]
        assert not alive, f"still running: {[_cmdline(p) for p in alive]}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if h.ssh("pgrep -f '[(]mitogen:'", check=False).returncode:
                break
            time.sleep(0.5)
        else:
            pytest.fail("Mitogen's interpreter kept running on the host: "
                        + h.ssh("ps -eo pid,args", check=False).stdout)
    finally:
        if cli.poll() is None:
            cli.kill()
        h.ssh("pkill -fx 'sleep 246'", check=False)


def test_a_unit_runs_under_systemd(trio: Lab) -> None:
    h = trio.hosts[0]
    h.ssh("systemd-run --unit vllama-lab-probe sleep 300")
    proc = ansible(trio.inventory_path, h.name, "-m", "ansible.builtin.command",
                   "-a", "systemctl is-active vllama-lab-probe")
    assert proc.returncode == 0 and "active" in proc.stdout, explain(proc)
    h.ssh("systemctl stop vllama-lab-probe")
    stopped = h.ssh("systemctl is-active vllama-lab-probe", check=False)
    # is-active exits 3 for a unit that is not active (an SSH failure would be 255).
    assert (stopped.returncode, stopped.stdout.strip()) in ((3, "inactive"), (4, "inactive")), \
        stopped


def test_reboot_and_come_back(trio: Lab) -> None:
    h = trio.hosts[2]
    before = h.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    proc = ansible(trio.inventory_path, h.name, "-m", "ansible.builtin.reboot",
                   "-a", "reboot_timeout=120")
    assert proc.returncode == 0, explain(proc)
    after = h.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    assert after and after != before
    assert trio.status(h.name) == "running"
    console = lab_host.console_tail(trio.name, h.name, lines=400)
    assert "the host rebooted: starting it again" in console


def test_reboot_under_mitogen(trio: Lab) -> None:
    """The NVIDIA role reboots a host: Mitogen must reconnect after it."""
    h = trio.hosts[2]
    before = h.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    proc = subprocess.run([str(BIN / "ansible"), h.name, "-i", str(trio.inventory_path),
                           "-m", "ansible.builtin.reboot", "-a", "reboot_timeout=120"],
                          capture_output=True, text=True, timeout=300, env=_mitogen_env(),
                          check=False)
    assert proc.returncode == 0, explain(proc)
    after = h.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    assert after and after != before
    assert trio.status(h.name) == "running"


def test_paused_host_is_unreachable_then_resumes(trio: Lab, tmp_path: Path) -> None:
    paused, other = trio.hosts[1], trio.hosts[0]
    play = tmp_path / "touch.yml"
    play.write_text(yaml.safe_dump([{
        "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Touch a file.", "ansible.builtin.file": {
            "path": "/tmp/vllama-lab-touched", "state": "touch"}}]}]))
    trio.pause(paused.name)
    try:
        assert trio.status(paused.name) == "paused"
        started = time.monotonic()
        proc = playbook(trio.inventory_path, play, "--limit", f"{paused.name},{other.name}",
                        "-e", "ansible_timeout=3", timeout=120)
        took = time.monotonic() - started
        assert proc.returncode == 4, explain(proc)  # 4: some host unreachable
        assert "UNREACHABLE" in proc.stdout, explain(proc)
        assert f"{other.name}" in proc.stdout and "ok=1" in proc.stdout, explain(proc)
        assert took < 60, f"an unreachable host took {took:.0f}s to be given up"
    finally:
        trio.resume(paused.name)
    assert trio.status(paused.name) == "running"
    proc = playbook(trio.inventory_path, play, "--limit", paused.name)
    assert proc.returncode == 0, explain(proc)


def test_isolated_host_reaches_nothing_but_can_be_provisioned(lab_factory, tmp_path: Path,
                                                             ) -> None:
    lab = lab_factory(1, isolated=True)
    h = lab.hosts[0]
    assert h.ssh("ip route; ip -6 route").stdout.strip() == ""
    for url in ("https://pypi.org/simple/", "http://deb.debian.org/"):
        probe = h.ssh(f"curl -sS -m 5 {url}", check=False)
        # curl's own failures: 6 cannot resolve, 7 cannot connect, 28 timed out (an SSH
        # failure, exit 255, must not pass for "unreachable").
        assert probe.returncode in (6, 7, 28), (url, probe.returncode, probe.stderr)
    play = tmp_path / "provision.yml"
    play.write_text(yaml.safe_dump([{
        "hosts": "all", "gather_facts": True,
        "tasks": [
            {"name": "Create a system user.", "ansible.builtin.user": {
                "name": "probe", "system": True, "create_home": False}},
            {"name": "Write a file.", "ansible.builtin.copy": {
                "dest": "/etc/vllama-lab-probe", "content": "provisioned\n", "mode": "0644"}},
            {"name": "Reboot through the proxy.", "ansible.builtin.reboot": {
                "reboot_timeout": 120}},
        ]}]))
    proc = playbook(lab.inventory_path, play)
    assert proc.returncode == 0, explain(proc)
    assert h.ssh("getent passwd probe && cat /etc/vllama-lab-probe").stdout.endswith(
        "provisioned\n")


def test_models_size_is_a_real_filesystem(lab_factory) -> None:
    lab = lab_factory(1, models_size="64M")
    h = lab.hosts[0]
    size, mode = h.ssh("df -B1M --output=size /tank/ai/models | tail -1; "
                       "stat -c %a /tank/ai/models").stdout.split()
    assert int(size) == 64
    assert mode == "755"
    full = h.ssh("dd if=/dev/zero of=/tank/ai/models/big bs=1M count=80", check=False)
    assert full.returncode != 0 and "No space left" in full.stderr


def test_snapshot_then_up_from(lab_factory) -> None:
    source = lab_factory(1, user="bob")
    src = source.hosts[0]
    src.ssh("echo from-the-snapshot > /root/marker")
    snap = source.snapshot(src.name, f"{source.name}-snap")
    assert source.status(src.name) == "running"  # the source runs on
    clones = lab_factory(2, from_snapshot=snap)
    src_id = src.ssh("cat /etc/machine-id; ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"
                     ).stdout
    ids = {src_id}
    for h in clones.hosts:
        out = h.ssh("cat /root/marker; hostname").stdout.split()
        assert out == ["from-the-snapshot", h.name]
        assert _sshd_listens_on(h) == [f"{h.address}:22"]
        ids.add(h.ssh("cat /etc/machine-id; ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"
                      ).stdout)
        assert h.ssh("id -un", user="bob").stdout.strip() == "bob"  # the snapshot's user
    assert len(ids) == 3  # machine-id and host keys are per host


def test_down_leaves_nothing_and_spares_other_labs(lab_factory) -> None:
    keep = lab_factory(1)
    gone = lab_factory(2, isolated=True, models_size="16M")
    gone.hosts[0].ssh("true")
    assert all(leftovers(gone.name).values())  # the check sees a running lab
    gone.pause(gone.hosts[1].name)  # a paused host is thawed and halted too
    gone.down()
    assert leftovers(gone.name) == {"processes": [], "mounts": [], "cgroups": [], "folders": []}
    assert keep.hosts[0].ssh("hostname").stdout.strip() == keep.hosts[0].name


def test_down_cleans_up_after_a_killed_run(lab_factory) -> None:
    lab = lab_factory(1, models_size="16M")
    h = lab.hosts[0]
    sup = lab_host.supervisor_pid(lab.name, h.name)
    nsp = lab_host.nspawn_pid(lab.name, h.name)
    assert sup and nsp
    os.kill(sup, signal.SIGKILL)
    os.kill(nsp, signal.SIGKILL)  # the host's systemd is orphaned, mounts stay
    time.sleep(0.5)
    assert lab.status(h.name) == "stopped"
    lab.down()
    assert leftovers(lab.name) == {"processes": [], "mounts": [], "cgroups": [], "folders": []}


def test_fuse_and_docker_flags_reach_the_host(lab_factory) -> None:
    lab = lab_factory(1, fuse=True, docker=True)
    h = lab.hosts[0]
    assert h.ssh("test -c /dev/fuse && echo fuse").stdout.strip() == "fuse"
    # Docker needs the unified cgroup hierarchy, every capability and a real /var/lib/docker.
    assert h.ssh("stat -fc %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    cap_sys_module = ("python3 -c \"import re; s=open('/proc/1/status').read(); "
                      "print(int(re.search(r'CapBnd:\\s*(\\w+)', s)[1], 16) >> 16 & 1)\"")
    assert h.ssh(cap_sys_module).stdout.strip() == "1"
    assert h.ssh("grep -c ' /var/lib/docker ' /proc/self/mountinfo").stdout.strip() == "1"
    h.ssh("echo kept > /var/lib/docker/probe")
    assert (lab_host.HostPaths(lab.name, h.name).docker / "probe").read_text() == "kept\n"
