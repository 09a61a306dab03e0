"""The controller-side wheelhouse: compiled engine wheels, built once per key, reused by every host.

llama-cpp-python ships only an sdist, and pip caches built wheels keyed on the sdist alone,
ignoring CMAKE_ARGS, so a wheel built with one set of flags is silently reused for another.
Wheels are therefore built explicitly (``pip wheel --no-deps -w DIR``) into a folder keyed by
everything that changes the binary:

    <cache>/wheelhouse/<dist>-<version>-<backend>-<machine>-<python tag>-<libc>-<cmake hash>/

with a ``COMPLETE`` marker written last, so a killed build never looks finished.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vllama_provision import engines, paths
from vllama_provision.errors import VllamaError

MARKER = "COMPLETE"


class WheelhouseError(VllamaError):
    """A wheel could not be built or is missing."""


@dataclass(frozen=True)
class WheelKey:
    dist: str
    version: str
    backend: str
    machine: str
    python_tag: str
    libc: str
    cmake_args: str

    @property
    def name(self) -> str:
        digest = hashlib.sha256(self.cmake_args.encode()).hexdigest()[:8]
        return (f"{self.dist}-{self.version}-{self.backend}-{self.machine}-{self.python_tag}-"
                f"{self.libc}-{digest}")


def python_tag(version: str) -> str:
    """'3.11.2' -> 'cp311'."""
    major, minor = [*version.split("."), "0", "0"][:2]
    return f"cp{major}{minor}"


def key_for(server: str, version: str, backend: str, machine: str, python: str,
            libc: str) -> WheelKey | None:
    """The key of the compiled wheel a native engine needs, or None (nothing to compile)."""
    if server != "llama-cpp-python":
        return None
    return WheelKey("llama-cpp-python", version, backend, machine, python_tag(python), libc,
                    engines.cmake_args_for(backend, machine))


def local_key() -> WheelKey:
    """The key for a CPU build on this controller (what the tests and the demo use)."""
    import platform

    return WheelKey("llama-cpp-python", engines.default_version("llama-cpp-python", "cpu"),
                    "cpu", platform.machine(), python_tag(platform.python_version()),
                    "".join(platform.libc_ver()), engines.cmake_args_for("cpu",
                                                                         platform.machine()))


def folder(key: WheelKey, root: Path | None = None) -> Path:
    return folder_by_name(key.name, root)


def wheels(key: WheelKey, root: Path | None = None) -> list[Path]:
    """The finished wheels of a key ([] while missing or incomplete)."""
    where = folder(key, root)
    if not (where / MARKER).is_file():
        return []
    return sorted(where.glob("*.whl"))


def build(key: WheelKey, root: Path | None = None, log: Path | None = None) -> list[Path]:
    """Build the key's wheel on this machine (only valid when it matches the key's platform)."""
    target = folder(key, root)
    if wheels(key, root):
        return wheels(key, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key.name}-", dir=target.parent))
    env = {**os.environ, "CMAKE_ARGS": key.cmake_args, "PIP_NO_CACHE_DIR": "1"}
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", key.dist,
           "-w", str(work), f"{key.dist}=={key.version}"]
    with (log.open("a") if log else open(os.devnull, "w")) as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    built = sorted(work.glob("*.whl"))
    if proc.returncode != 0 or not built:
        shutil.rmtree(work, ignore_errors=True)
        raise WheelhouseError(f"building {key.dist}=={key.version} failed (exit "
                              f"{proc.returncode}); see {log or 'the build output'}")
    (work / MARKER).write_text(key.name + "\n")
    try:
        work.rename(target)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)  # a concurrent build finished first
    return wheels(key, root)


def folder_by_name(name: str, root: Path | None = None) -> Path:
    return (root or paths.cache_dir() / "wheelhouse") / name


def adopt_by_name(name: str, wheel_files: list[Path], root: Path | None = None) -> Path:
    """Like adopt(), for a key known only by its folder name (from a host's build)."""
    target = folder_by_name(name, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".adopt-{name}-", dir=target.parent))
    for wheel in wheel_files:
        shutil.copy2(wheel, work / wheel.name)
    (work / MARKER).write_text(name + "\n")
    if target.exists():
        shutil.rmtree(work, ignore_errors=True)
    else:
        work.rename(target)
    return target
