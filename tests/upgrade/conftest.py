"""A three-host fleet serving SmolLM2 through llama.cpp at OLD, and the NEW build to roll out
(the same compiled wheel relabelled, see tests/lab/wheels.py)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import ROOT, engine_wheel, run_cli, smollm2_instance, write_inventory
from wheels import OLD, ensure_relabelled

__all__ = ["engine_wheel", "run_cli"]
ROOT_DIR = ROOT

INSTANCE = "smollm2"


@pytest.fixture(scope="session")
def relabelled_wheel(engine_wheel: list[Path]) -> Path:
    """The wheelhouse key of the relabelled build (``NEW``), made once from the real wheel."""
    return ensure_relabelled(engine_wheel[0])


HOOK_LOG = "/var/tmp/vllama-hooks.log"


def hooks(where: str, log: str) -> dict[str, Any]:
    """Pre-switch and post-verify hooks that append what they were told to ``log``."""
    line = 'echo "{} $VLLAMA_HOST $VLLAMA_INSTANCES $VLLAMA_RELEASES $(date +%s.%N)" >> ' + log
    return {"vllama_hook_on": where, "vllama_hook_pre_switch": line.format("pre"),
            "vllama_hook_post_verify": line.format("post")}


@dataclasses.dataclass
class Fleet:
    lab: Any
    inventory: Path
    controller_hook_log: Path

    @property
    def hosts(self) -> list[Any]:
        return list(self.lab.hosts)

    def current(self, host: Any) -> str:
        return host.ssh(f"readlink /opt/vllama/instances/{INSTANCE}/current",
                        check=False).stdout.strip().rsplit("/", 1)[-1]

    def version(self, host: Any) -> str:
        release = self.current(host)
        out = host.ssh(f"cat /opt/vllama/instances/{INSTANCE}/releases/{release}/manifest.json",
                       check=False).stdout
        return json.loads(out)["engine_version"] if out.strip() else ""

    def venv(self, host: Any, version: str) -> str:
        return host.ssh(f"ls -d /opt/vllama/engines/llamacpp-{version}-cpu-*").stdout.strip()

    def hook_calls(self, host: Any) -> list[list[str]]:
        """The hook calls on ``host`` so far: [when, host, instance, release, time]; the last
        host's hooks run on the controller."""
        if host.name == self.hosts[-1].name:
            text = (self.controller_hook_log.read_text() if self.controller_hook_log.exists()
                    else "")
        else:
            text = host.ssh(f"cat {HOOK_LOG}", check=False).stdout
        return [line.split() for line in text.splitlines()]

    def history(self, host: Any) -> list[dict[str, Any]]:
        out = host.ssh("cat /var/lib/vllama/history.json", check=False).stdout
        return json.loads(out) if out.strip() else []


@pytest.fixture(scope="module")
def fleet(lab_factory_module: Any, lab_golden: Path, engine_wheel: list[Path],
          relabelled_wheel: Path, run_cli: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Three hosts applied once at the old engine version, with hooks around every switch: on
    the hosts themselves for the first two, on the controller for the third."""
    lab = lab_factory_module(3)
    folder = tmp_path_factory.mktemp("fleet")
    controller_log = folder / "controller-hooks.log"
    inventory = write_inventory(lab, folder / "fleet.yml", {
        host.name: {"vllama_platform": "linux-cpu", "vllama_lock_wait": 0,
                    "vllama_verify_timeout": 300,
                    **(hooks("controller", str(controller_log)) if index == 2 else
                       hooks("host", HOOK_LOG)),
                    "vllama_instances": [smollm2_instance(engine_version=OLD)]}
        for index, host in enumerate(lab.hosts)})
    result = run_cli("apply", str(inventory))
    assert result.rc == 0, result.stderr
    yield Fleet(lab, inventory, controller_log)
