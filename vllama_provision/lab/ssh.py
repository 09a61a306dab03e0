"""The lab key pair and the SSH options every lab host is reached with."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

from vllama_provision.lab.state import labs_root
from vllama_provision.lab.system import file_lock, run

# Each host is self-contained: no known_hosts (every lab host has fresh host keys at the address a
# previous one had), one control socket per host and user, and keep-alives so a host that drops
# off (``lab pause``) is noticed in seconds even through an open control connection.
COMMON_OPTIONS = (
    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    " -o ControlMaster=auto -o ControlPersist=60s -o ControlPath=/tmp/vllama-lab-%C"
    " -o ServerAliveInterval=3 -o ServerAliveCountMax=3"
)


def key_path() -> Path:
    """``state_dir()/labs/id_ed25519``: one key pair shared by every lab, made on first use."""
    return labs_root() / "id_ed25519"


def ensure_key() -> Path:
    key = key_path()
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    with file_lock(labs_root() / ".key.lock"):
        if not (key.exists() and key.with_suffix(".pub").exists()):
            key.unlink(missing_ok=True)
            key.with_suffix(".pub").unlink(missing_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vllama-provision-lab",
                 "-f", key], what="ssh-keygen for the lab key")
    os.chmod(key, 0o600)
    return key


def public_key() -> str:
    return ensure_key().with_suffix(".pub").read_text().strip()


def proxy_command(proxy_script: Path) -> str:
    return f"-o ProxyCommand={shlex.quote(str(proxy_script))}"


def ssh_argv(address: str, *, user: str = "root", proxy_script: Path | None = None,
             control: bool = True, timeout: int = 10) -> list[str]:
    """An ``ssh`` command line (without the remote command) for a lab host."""
    argv = ["ssh", "-i", str(key_path()), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}"]
    words = shlex.split(COMMON_OPTIONS)
    for opt in words[1::2]:  # the words alternate: "-o", "Key=value"
        if control or not opt.startswith("Control"):
            argv += ["-o", opt]
    if proxy_script is not None:
        argv += ["-o", f"ProxyCommand={proxy_script}"]
    return [*argv, f"{user}@{address}"]


def banner(address: str, proxy_script: Path | None, timeout: float = 2.0) -> bool:
    """Whether an sshd answers with its banner at ``address`` (through the proxy if isolated)."""
    if proxy_script is None:
        try:
            with socket.create_connection((address, 22), timeout=timeout) as sock:
                sock.settimeout(timeout)
                return sock.recv(64).startswith(b"SSH-")
        except OSError:
            return False
    try:
        proc = subprocess.run([str(proxy_script)], input=b"", capture_output=True,
                              timeout=timeout, check=False)
        out = proc.stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
    return out.startswith(b"SSH-")


def wait_login(address: str, proxy_script: Path | None, deadline: float) -> str:
    """Wait until a key login as root works; return '' or the last error."""
    last = ""
    while time.monotonic() < deadline:
        if banner(address, proxy_script):
            argv = ssh_argv(address, proxy_script=proxy_script, control=False, timeout=5)
            proc = subprocess.run([*argv, "true"], capture_output=True, text=True, check=False,
                                  timeout=30)
            if proc.returncode == 0:
                return ""
            last = proc.stderr.strip()
        time.sleep(0.2)
    return last or "sshd did not answer"
