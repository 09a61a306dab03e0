"""One lab host on the controller: its overlay, its identity, its supervisor, its teardown."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from vllama_provision.errors import LabError
from vllama_provision.lab import cgroups, ssh
from vllama_provision.lab.state import HostState, lab_dir
from vllama_provision.lab.system import mounts_below, run, safe_rmtree, unmount_all_below

MODELS_ROOT = "/tank/ai/models"
NSPAWN_RUN = Path("/run/systemd/nspawn")
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class HostPaths:
    lab: str
    name: str

    @property
    def root(self) -> Path:
        return lab_dir(self.lab) / "hosts" / self.name

    @property
    def upper(self) -> Path:
        """Overlay upper layer (the host's own changes)."""
        return self.root / "upper"

    @property
    def work(self) -> Path:
        """Overlay work folder."""
        return self.root / "work"

    @property
    def merged(self) -> Path:
        """The host's root filesystem (overlay mount point)."""
        return self.root / "merged"

    @property
    def models(self) -> Path:
        """Tmpfs bound at /tank/ai/models (--models-size)."""
        return self.root / "models"

    @property
    def docker(self) -> Path:
        """Bound at /var/lib/docker (--docker)."""
        return self.root / "docker"

    @property
    def console(self) -> Path:
        """Console output, appended."""
        return self.root / "console.log"

    @property
    def supervisor_pid(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def nspawn_pid(self) -> Path:
        return self.root / "nspawn.pid"

    @property
    def leader_pid(self) -> Path:
        """Pid of the host's init, rewritten on every boot."""
        return self.root / "leader.pid"

    @property
    def proxy(self) -> Path:
        """ProxyCommand script (--isolated)."""
        return self.root / "proxy"

    @property
    def boot(self) -> Path:
        """What the supervisor runs."""
        return self.root / "boot.json"

    @property
    def supervisor_log(self) -> Path:
        return self.root / "supervisor.log"


def console_tail(lab: str, name: str, lines: int = 25) -> str:
    path = HostPaths(lab, name).console
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console log)"
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(console log is empty)"


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    os.chmod(path, mode)


def _set_identity(merged: Path, host: HostState, pubkey: str) -> None:
    """Hostname, machine-id, fresh SSH host keys and sshd listening only on the host's address."""
    _write(merged / "etc/hostname", host.name + "\n")
    _write(merged / "etc/hosts", f"127.0.0.1\tlocalhost\n{host.address}\t{host.name}\n"
           "::1\tlocalhost ip6-localhost ip6-loopback\n")
    _write(merged / "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    (merged / "var/lib/systemd/random-seed").unlink(missing_ok=True)
    for old in (merged / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    for kind in ("ed25519", "ecdsa"):
        run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{host.name}",
             "-f", merged / f"etc/ssh/ssh_host_{kind}_key"], what=f"ssh-keygen for {host.name}")
    _write(merged / "etc/ssh/sshd_config.d/10-vllama-lab.conf",
           f"# vllama-provision lab host {host.name}: reachable only on its own address\n"
           f"ListenAddress {host.address}:22\n")
    ssh_dir = merged / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    _write(ssh_dir / "authorized_keys", pubkey + "\n", 0o600)


def _add_user(merged: Path, user: str, pubkey: str) -> None:
    """A login user with the lab key and passwordless sudo (created inside the host's tree)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    passwd = (merged / "etc/passwd").read_text()
    if not re.search(rf"^{re.escape(user)}:", passwd, re.M):
        run(["chroot", merged, "useradd", "--create-home", "--shell", "/bin/bash", user],
            what=f"useradd {user}", env=env)
    _write(merged / f"etc/sudoers.d/90-vllama-lab-{user}", f"{user} ALL=(ALL) NOPASSWD:ALL\n",
           0o440)
    script = ('h=$(getent passwd "$1" | cut -d: -f6) && install -d -m 700 -o "$1" -g "$1" "$h/.ssh"'
              ' && printf "%s\\n" "$2" > "$h/.ssh/authorized_keys"'
              ' && chown "$1:$1" "$h/.ssh/authorized_keys" && chmod 600 "$h/.ssh/authorized_keys"')
    run(["chroot", merged, "sh", "-c", script, "sh", user, pubkey],
        what=f"authorized_keys for {user}", env=env)


def _proxy_script(paths: HostPaths, host: HostState) -> str:
    return (
        "#!/bin/sh\n"
        f"# ProxyCommand for the isolated lab host {host.name}: enter the network namespace of\n"
        "# its current init (the pid changes on every reboot) and connect to its sshd.\n"
        f"leader=$(cat {paths.leader_pid} 2>/dev/null) || {{ echo '{host.name} is not running' >&2;"
        " exit 255; }\n"
        f'exec nsenter --net="/proc/$leader/ns/net" socat STDIO TCP:{host.address}:22\n')


def nspawn_argv(paths: HostPaths, host: HostState) -> tuple[list[str], dict[str, str]]:
    argv = ["systemd-nspawn", "-D", str(paths.merged), "--boot", "--register=no", "--keep-unit",
            "--console=read-only", f"--machine={host.name}", f"--hostname={host.name}",
            "--resolv-conf=copy-host", "--timezone=off"]
    env: dict[str, str] = {}
    if host.fuse:
        argv.append("--bind=/dev/fuse")
    if host.docker:
        argv += ["--capability=all", f"--bind={paths.docker}:/var/lib/docker"]
        env.update({"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1", "SYSTEMD_SECCOMP": "0"})
    if host.isolated:
        argv.append("--private-network")
    if host.models_size:
        argv.append(f"--bind={paths.models}:{MODELS_ROOT}")
    return argv, env


def prepare(lab: str, host: HostState) -> None:
    """Create the host's folders, mount its overlay and tmpfs and write its identity."""
    paths = HostPaths(lab, host.name)
    for sub in ("upper", "work", "merged"):
        getattr(paths, sub).mkdir(parents=True, exist_ok=True)
    if not mounts_below(paths.merged):
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={':'.join(host.lowers)},upperdir={paths.upper},workdir={paths.work}",
             paths.merged], what=f"overlay mount for {host.name}")
    pubkey = ssh.public_key()
    _set_identity(paths.merged, host, pubkey)
    if host.user:
        _add_user(paths.merged, host.user, pubkey)
    if host.models_size:
        paths.models.mkdir(exist_ok=True)
        if not mounts_below(paths.models):
            run(["mount", "-t", "tmpfs", "-o", f"size={host.models_size},mode=0755", "tmpfs",
                 paths.models], what=f"tmpfs of {host.models_size} for {host.name}")
    if host.docker:
        paths.docker.mkdir(exist_ok=True)
    if host.isolated:
        _write(paths.proxy, _proxy_script(paths, host), 0o755)
    argv, env = nspawn_argv(paths, host)
    _write(paths.boot, json.dumps({"lab": lab, "host": host.name, "argv": argv, "env": env},
                                  indent=2) + "\n")


def start(lab: str, host: HostState) -> None:
    """Start the host's supervisor, detached (``setsid -f``); see :func:`wait_started`."""
    paths = HostPaths(lab, host.name)
    for name in ("exit.status", "supervisor.pid", "nspawn.pid", "leader.pid"):
        (paths.root / name).unlink(missing_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(_PACKAGE_PARENT),
                                                       os.environ.get("PYTHONPATH")])),
           "LC_ALL": "C.UTF-8"}
    with open(paths.supervisor_log, "ab") as log:
        subprocess.run(["setsid", "-f", sys.executable, "-m", "vllama_provision.lab.supervisor",
                        str(paths.root)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                       env=env, cwd="/", check=True)


def wait_started(lab: str, name: str, timeout: float = 30) -> None:
    """Wait until the supervisor has moved into its cgroups and recorded its pid."""
    paths = HostPaths(lab, name)
    deadline = time.monotonic() + timeout
    while not paths.supervisor_pid.exists():
        if time.monotonic() > deadline:
            raise LabError(f"host {name}: the supervisor did not start; see "
                           f"{paths.supervisor_log}:\n{paths.supervisor_log.read_text()[-2000:]}")
        time.sleep(0.02)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process whose command line contains ``marker``."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return marker in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


def supervisor_pid(lab: str, name: str) -> int | None:
    paths = HostPaths(lab, name)
    pid = _read_pid(paths.supervisor_pid)
    return pid if _alive(pid, str(paths.root)) else None


def nspawn_pid(lab: str, name: str) -> int | None:
    pid = _read_pid(HostPaths(lab, name).nspawn_pid)
    return pid if _alive(pid, f"--machine={name}") else None


def state(lab: str, name: str) -> str:
    """``running``, ``paused`` or ``stopped``."""
    if supervisor_pid(lab, name) is None and nspawn_pid(lab, name) is None:
        return "stopped"
    try:
        return "paused" if cgroups.is_frozen(lab, name) else "running"
    except OSError:
        return "running"


def request_stop(lab: str, name: str) -> None:
    """Ask the host to halt: thaw it, then one SIGTERM to its supervisor (or orphaned nspawn)."""
    with contextlib.suppress(LabError, OSError):
        cgroups.freeze(lab, name, frozen=False)
    pid = supervisor_pid(lab, name) or nspawn_pid(lab, name)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def finish_stop(lab: str, name: str, deadline: float) -> None:
    """Wait for the halt, kill whatever is left, then remove cgroups, mounts and folders."""
    while time.monotonic() < deadline and (supervisor_pid(lab, name) or nspawn_pid(lab, name)):
        time.sleep(0.1)
    cgroups.kill_all(lab, name)
    paths = HostPaths(lab, name)
    for pid_file, marker in (("supervisor.pid", str(paths.root)),
                             ("nspawn.pid", f"--machine={name}")):
        pid = _read_pid(paths.root / pid_file)
        if pid and _alive(pid, marker):  # outside our cgroups (e.g. moved away by hand)
            os.kill(pid, signal.SIGKILL)
    cgroups.remove(lab, name)
    root = paths.root
    _remove_nspawn_leftovers(paths)
    unmount_all_below(root)
    safe_rmtree(root)


def nspawn_leftovers(name: str, merged: Path | None = None) -> list[Path]:
    """What systemd-nspawn keeps under /run for a machine it ran (left behind when killed)."""
    found = [NSPAWN_RUN / "propagate" / name]
    if merged is not None and mounts_below(merged):
        st = os.stat(merged)
        found.append(NSPAWN_RUN / "locks" / f"inode-{st.st_dev}:{st.st_ino}")
    return [p for p in found if p.exists()]


def _remove_nspawn_leftovers(paths: HostPaths) -> None:
    for path in nspawn_leftovers(paths.name, paths.merged):
        if path.is_dir() and not mounts_below(path):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file():
            path.unlink(missing_ok=True)


def remove_tree_later(lab: str) -> None:
    """Remove the lab's folder once every host is gone (nothing may be mounted below it)."""
    root = lab_dir(lab)
    unmount_all_below(root)
    safe_rmtree(root)
