"""Real lab hosts: boot, Ansible as root and with become, systemd, reboot, pause, teardown."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from labtools import ansible, explain, leftovers, playbook

from vllama_provision.lab import host as lab_host
from vllama_provision.lab.handle import Lab, LabHost

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
