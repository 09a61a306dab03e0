"""The small process that keeps one lab host's systemd-nspawn running.

Started detached by ``lab up`` as ``python -m vllama_provision.lab.supervisor HOST_DIR``. It
moves itself into the host's own cgroups (so nspawn's ``payload`` cgroup is the host's, not a
shared ``/payload``), runs nspawn with the console appended to ``console.log``, restarts it when
it exits 133 (a reboot inside the host), records the container leader's pid for the isolated-host
ProxyCommand, and on SIGTERM sends nspawn one SIGTERM, which halts the host cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from vllama_provision.lab import cgroups

REBOOT_EXIT = 133
MAX_QUICK_RESTARTS = 5


class Supervisor:
    def __init__(self, host_dir: Path):
        self.dir = host_dir
        self.spec = json.loads((host_dir / "boot.json").read_text())
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.signalled = False
        self.console = open(host_dir / "console.log", "ab", buffering=0)  # noqa: SIM115

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.console.write(f"[vllama-lab supervisor {stamp}] {message}\n".encode())

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        self._forward()

    def _forward(self) -> None:
        if self.child is not None and self.child.poll() is None and not self.signalled:
            self.signalled = True
            self.log("halting the host (SIGTERM to systemd-nspawn)")
            self.child.send_signal(signal.SIGTERM)

    def _record_leader(self, nspawn_pid: int) -> None:
        """Write the pid of the container's init (nspawn's child in a new pid namespace)."""
        own_ns = os.readlink(f"/proc/{nspawn_pid}/ns/pid")
        deadline = time.monotonic() + 30
        while self.child is not None and self.child.poll() is None and time.monotonic() < deadline:
            try:
                kids = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
                for kid in kids:
                    if os.readlink(f"/proc/{kid}/ns/pid") != own_ns:
                        _write(self.dir / "leader.pid", kid)
                        return
            except OSError:
                pass
            time.sleep(0.05)

    def run(self) -> int:
        cgroups.join(self.spec["lab"], self.spec["host"])
        _write(self.dir / "supervisor.pid", str(os.getpid()))
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **self.spec.get("env", {})}
        quick = 0
        rc = 0
        while not self.stopping:
            started = time.monotonic()
            self.log("starting: " + " ".join(self.spec["argv"]))
            (self.dir / "leader.pid").unlink(missing_ok=True)
            self.child = subprocess.Popen(self.spec["argv"], stdin=subprocess.DEVNULL,
                                          stdout=self.console, stderr=self.console, env=env)
            self.signalled = False
            _write(self.dir / "nspawn.pid", str(self.child.pid))
            if self.stopping:
                self._forward()
            self._record_leader(self.child.pid)
            rc = self.child.wait()
            self.log(f"systemd-nspawn exited with {rc}")
            if self.stopping or rc != REBOOT_EXIT:
                break
            quick = quick + 1 if time.monotonic() - started < 5 else 0
            if quick >= MAX_QUICK_RESTARTS:
                self.log("rebooting in a loop: giving up")
                break
            self.log("the host rebooted: starting it again")
        for name in ("nspawn.pid", "leader.pid", "supervisor.pid"):
            (self.dir / name).unlink(missing_ok=True)
        _write(self.dir / "exit.status", str(rc))
        return 0


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m vllama_provision.lab.supervisor HOST_DIR", file=sys.stderr)
        return 2
    return Supervisor(Path(argv[0])).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
