"""Helpers for the lab tests: run Ansible against a lab and look for leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vllama_provision import paths
from vllama_provision.lab import cgroups
from vllama_provision.lab.state import lab_dir

BIN = Path(sys.executable).parent
ANSIBLE_ENV = {
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1",
    "ANSIBLE_HOST_KEY_CHECKING": "False",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_DEPRECATION_WARNINGS": "False",
    "ANSIBLE_RETRY_FILES_ENABLED": "False",
}


def ansible(inventory: Path, pattern: str, *args: str, timeout: float = 300,
            ) -> subprocess.CompletedProcess[str]:
    """``ansible PATTERN -i INVENTORY ARGS...`` from the running venv."""
    return subprocess.run([str(BIN / "ansible"), pattern, "-i", str(inventory), *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **ANSIBLE_ENV})


def playbook(inventory: Path, play: Path, *args: str, timeout: float = 300,
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(play), *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **ANSIBLE_ENV})


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"


def leftovers(lab: str) -> dict[str, list[str]]:
    """Everything of ``lab`` still on the machine: processes, mounts, cgroups, folders."""
    folder = str(lab_dir(lab))
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if folder in cmdline or f"--machine={lab}-" in cmdline:
            procs.append(f"{pid}: {cmdline}")
    procs += [f"{pid} (in the lab's cgroups)" for pid in cgroups.pids(lab)]
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        mounts = [line.strip() for line in fh if folder in line]
    groups = [str(p) for p in cgroups.existing(lab)]
    folders = [folder] if Path(folder).exists() else []
    folders += [str(p) for p in Path("/run/systemd/nspawn/propagate").glob(f"{lab}-*")]
    # The controller's API key copies of the lab's hosts (named <lab>-N).
    folders += [str(p) for p in paths.keys_dir().glob(f"{lab}-*")]
    return {"processes": procs, "mounts": mounts, "cgroups": groups, "folders": folders}
