"""What a Mac says about itself, parsed with the standard library only.

Used on the host by the vllama_host_facts module (macOS hosts) and checked on the controller
against recorded real outputs (tests/fixtures/macos, each with its public source). Every parser
takes the command's text and returns None (or 0) for what the text does not tell, never raises:
facts are gathered read-only and must not fail a host because one command changed its wording.
"""

from __future__ import annotations

import json
import re

# The oldest macOS the engine runs on: xllamacpp's macOS wheels are tagged macosx_13_0_arm64.
MIN_MACOS = (13, 0)
# The Python the engine's venv needs (xllamacpp: Requires-Python >= 3.10). The Command Line
# Tools' /usr/bin/python3 is 3.9 on macOS 13 to 15, and a stub without them.
MIN_PYTHON = (3, 10)
# Where a usable Python is looked for, in order: Homebrew (Apple Silicon, then Intel prefix),
# the python.org installer's framework, the Command Line Tools' (through /usr/bin).
PYTHON_CANDIDATES = ("/opt/homebrew/bin/python3", "/usr/local/bin/python3",
                     "/Library/Frameworks/Python.framework/Versions/Current/bin/python3",
                     "/usr/bin/python3")
# Metal's default cap on what the GPU may wire when iogpu.wired_limit_mb is unset: roughly two
# thirds of RAM up to 36 GiB and three quarters above (recommendedMaxWorkingSetSize as
# llama.cpp reports it on such Macs). An estimate, kept on the low side; set
# vllama_macos_wired_limit_mb to make the budget exact.
DEFAULT_SHARE_SMALL = 2 / 3
DEFAULT_SHARE_LARGE = 3 / 4
LARGE_MEMORY = 36 * 1024 ** 3


def parse_version(text):
    """'14.5' -> (14, 5); '' or garbage -> None."""
    parts = re.findall(r"\d+", text or "")
    return tuple(int(p) for p in parts[:3]) if parts else None


def parse_sw_vers(text):
    """``sw_vers`` (no argument): {'name', 'version', 'build'}; missing lines give ''."""
    found = {"name": "", "version": "", "build": ""}
    keys = {"ProductName": "name", "ProductVersion": "version", "BuildVersion": "build"}
    for line in (text or "").splitlines():
        key, _sep, value = line.partition(":")
        if key.strip() in keys:
            found[keys[key.strip()]] = value.strip()
    return found


def parse_sysctl_int(text):
    """``sysctl -n KEY`` for an integer key; None when the key is unknown or not a number."""
    value = (text or "").strip()
    return int(value) if value.isdigit() else None


def parse_gpu_cores(text):
    """GPU cores from ``system_profiler SPDisplaysDataType -json`` (``sppci_cores`` of the
    built-in Apple GPU); None when the text does not say."""
    try:
        data = json.loads(text or "")
    except ValueError:
        return None
    for item in data.get("SPDisplaysDataType", []) if isinstance(data, dict) else []:
        cores = str(item.get("sppci_cores", "")) if isinstance(item, dict) else ""
        if cores.isdigit():
            return int(cores)
    return None


def parse_filevault(text):
    """``fdesetup status``: True ('FileVault is On.'), False ('FileVault is Off.'), else None.
    'FileVault is On, but needs to be restarted' (or encryption in progress) is on."""
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    if line.startswith("FileVault is On"):
        return True
    if line.startswith("FileVault is Off"):
        return False
    return None


def metal_budget(memory_bytes, wired_limit_mb):
    """(bytes the GPU may wire, basis): the wired limit when one is set (> 0), else macOS's
    default share of ``memory_bytes`` (an estimate)."""
    if wired_limit_mb:
        return int(wired_limit_mb) * 1024 * 1024, "wired_limit"
    share = DEFAULT_SHARE_LARGE if memory_bytes > LARGE_MEMORY else DEFAULT_SHARE_SMALL
    return int(memory_bytes * share), "default_share"


def python_usable(version_text):
    """Whether ``python3 --version`` output names a Python the engine's venv can use."""
    match = re.search(r"Python (\d+)\.(\d+)", version_text or "")
    return bool(match) and (int(match.group(1)), int(match.group(2))) >= MIN_PYTHON
