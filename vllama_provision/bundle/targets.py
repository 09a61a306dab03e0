"""A host's target for bundling: operating system, architecture and Python, known without it.

They come from the inventory (``vllama_os``, ``vllama_arch``, ``vllama_python``) or, for what the
inventory leaves empty, from the facts cache ``facts --save`` wrote. Each OS maps to the data a
bundle needs: its libc (part of the wheelhouse key), its package manager and the pip platform tags
of its wheels.
"""

from __future__ import annotations

import platform as _platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# OS -> (libc as the wheelhouse key spells it, package family).
OSES: dict[str, tuple[str, str]] = {
    "debian12": ("glibc2.36", "apt"),
    "debian13": ("glibc2.41", "apt"),
    "ubuntu22.04": ("glibc2.35", "apt"),
    "ubuntu24.04": ("glibc2.39", "apt"),
    "rhel9": ("glibc2.34", "dnf"),
    "macos": ("darwin", "macos"),  # no OS packages: the engine is a wheel (xllamacpp)
}
ARCHES = ("x86_64", "aarch64", "arm64")
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
PYTHON_PATTERN = r"^3\.[0-9]{1,2}$"


@dataclass(frozen=True)
class Target:
    os: str
    arch: str
    python: str
    source: str = "inventory"

    @property
    def libc(self) -> str:
        return OSES[self.os][0]

    @property
    def family(self) -> str:
        return OSES[self.os][1]

    @property
    def apt_name(self) -> str:
        """The folder of this target's package repository: 'debian12-amd64'."""
        return f"{self.os}-{DEB_ARCH.get(self.arch, self.arch)}"

    def pip_platforms(self) -> list[str]:
        """pip ``--platform`` tags of wheels that install on this target (newest first)."""
        if self.family == "macos":
            return ["macosx_14_0_arm64", "macosx_13_0_arm64", "macosx_12_0_arm64",
                    "macosx_11_0_arm64"]
        major, minor = (int(x) for x in self.libc.removeprefix("glibc").split("."))
        tags = [f"manylinux_{major}_{m}_{self.arch}" for m in range(minor, 16, -1)]
        tags.append(f"manylinux2014_{self.arch}")
        if self.arch == "x86_64":
            tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        return [*tags, f"linux_{self.arch}"]


def os_from_facts(platform: dict[str, Any]) -> str:
    """'debian12' from facts (Debian 12), '' when the OS is not one a bundle knows."""
    dist = str(platform.get("distribution") or "").lower()
    version = str(platform.get("distribution_version") or "")
    if platform.get("system") == "Darwin":
        return "macos"
    if dist == "debian":
        name = f"debian{version.split('.')[0]}"
    elif dist == "ubuntu":
        name = f"ubuntu{version}"
    elif dist in ("red", "rhel", "rocky", "almalinux"):
        name = f"rhel{version.split('.')[0]}"
    else:
        return ""
    return name if name in OSES else ""


def target_for(host_vars: dict[str, Any], facts: dict[str, Any] | None) -> tuple[Target | None,
                                                                                   str]:
    """The host's target, or None with what is missing."""
    plat = (facts or {}).get("platform") or {}
    os_name = str(host_vars.get("vllama_os") or "") or os_from_facts(plat)
    arch = str(host_vars.get("vllama_arch") or "") or str(plat.get("machine") or "")
    python = str(host_vars.get("vllama_python") or "")
    if not python and plat.get("python"):
        python = ".".join(str(plat["python"]).split(".")[:2])
    missing = [name for name, value in (("vllama_os", os_name), ("vllama_arch", arch),
                                        ("vllama_python", python)) if not value]
    if missing:
        return None, (f"{', '.join(missing)} unknown: set {' and '.join(missing)} in the "
                      "inventory, or run `vllama-provision facts INVENTORY --save` where the "
                      "hosts are reachable")
    if os_name not in OSES:
        return None, f"vllama_os {os_name!r} is not one of {', '.join(OSES)}"
    if arch not in ARCHES:
        return None, f"vllama_arch {arch!r} is not one of {', '.join(ARCHES)}"
    if not re.match(PYTHON_PATTERN, python):
        return None, f"vllama_python {python!r} is not a Python version like 3.11"
    declared = all(host_vars.get(v) for v in ("vllama_os", "vllama_arch", "vllama_python"))
    return Target(os_name, arch, python, "inventory" if declared else "facts"), ""


def controller_target() -> Target | None:
    """This controller as a target (None when its OS is not one a bundle knows)."""
    release: dict[str, str] = {}
    path = Path("/etc/os-release")
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                release[key] = value.strip().strip('"')
    plat = {"system": _platform.system(), "distribution": release.get("ID", ""),
            "distribution_version": release.get("VERSION_ID", "")}
    name = os_from_facts(plat)
    if not name:
        return None
    python = ".".join(_platform.python_version().split(".")[:2])
    return Target(name, _platform.machine(), python, "controller")
