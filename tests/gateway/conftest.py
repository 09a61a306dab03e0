"""One model service on lab hosts: a gateway host serving no model, two hosts serving SmolLM2
under one name (SHARED) and a third serving it under another (SINGLE) beside an embedding
instance (EMBED: all-MiniLM-L6-v2 converted once to GGUF, llama-cpp-python's embedding mode;
two instances on one host), applied once for the whole tier."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from converted_models import minilm_gguf
from e2e.conftest import engine_wheel, run_cli, smollm2_instance, write_inventory
from wheels import ensure_relabelled

from vllama_provision import paths
from vllama_provision.gateway import gateway_key_path

__all__ = ["engine_wheel", "run_cli"]


@pytest.fixture(scope="session")
def relabelled_wheel(engine_wheel: list[Path]) -> Path:
    """The wheelhouse key of the relabelled build (``NEW``), made once from the real wheel."""
    return ensure_relabelled(engine_wheel[0])

SHARED = "smollm2-135m-instruct"  # served by e1 and e2
SINGLE = "smollm2-b"              # served by e3 alone
EMBED = "all-minilm-l6-v2"        # embeddings, served by e3 beside SINGLE
ALL = {SHARED, SINGLE, EMBED}
UNIT = "vllama-smollm2"


@dataclasses.dataclass
class Service:
    lab: Any
    inventory: Path
    gateway: Any
    engines: list[Any]
    url: str

    @property
    def key(self) -> str:
        return Path(gateway_key_path("default")).read_text().strip()

    def client(self, key: str | None = None, timeout: float = 120) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=key or self.key, max_retries=0,
                      timeout=timeout)

    def upstream_keys(self) -> list[str]:
        keys = [paths.key_path(h.name, "smollm2") for h in self.engines]
        return [k.read_text().strip() for k in [*keys, paths.key_path(self.engines[2].name,
                                                                       "minilm")]]

    def served(self) -> set[str]:
        return {m.id for m in self.client().models.list().data}

    def wait_served(self, want: set[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.served() != want:
            assert time.monotonic() < deadline, f"the gateway serves {self.served()}, not {want}"
            time.sleep(1)

    def version(self, host: Any) -> str:
        """The engine version of the release ``host`` serves."""
        manifest = host.ssh("cat /opt/vllama/instances/smollm2/current/manifest.json").stdout
        return json.loads(manifest)["engine_version"]

    def admin(self, command: str) -> str:
        """One command on the gateway's admin socket."""
        script = ("import socket, sys; s = socket.socket(socket.AF_UNIX); "
                  "s.connect('/run/vllama-gateway/admin.sock'); "
                  "s.sendall(sys.argv[1].encode() + b'\\n'); "
                  "print(b''.join(iter(lambda: s.recv(65536), b'')).decode())")
        return self.gateway.ssh(f"python3 -c \"{script}\" '{command}'").stdout

    def stat(self, backend: str) -> dict[str, str]:
        """The gateway's own counters of a model backend (HAProxy's `show stat`)."""
        lines = self.admin("show stat").splitlines()
        header = lines[0][2:].split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == backend and row.get("svname") == "BACKEND":
                return row
        raise AssertionError(f"no backend {backend} in the gateway's stats")

    def access_log(self) -> str:
        return self.gateway.ssh("journalctl -u vllama-gateway -o cat --no-pager").stdout

    def answered_by(self, since: int) -> list[str]:
        """The instances (u_HOST.INSTANCE) that answered the requests logged after line
        ``since`` of the access log."""
        lines = self.access_log().splitlines()[since:]
        return re.findall(r" m_\S+/(u_\S+) ", "\n".join(lines))


@pytest.fixture(scope="module")
def service(lab_factory_module: Any, lab_golden: Path, engine_wheel: list[Path],
            run_cli: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    lab = lab_factory_module(4)
    gw, e1, e2, e3 = lab.hosts
    embedder = minilm_gguf(tmp_path_factory.mktemp("logs") / "minilm.log")
    folder = tmp_path_factory.mktemp("service")
    common = {"vllama_platform": "linux-cpu", "vllama_lock_wait": 0,
              "vllama_verify_timeout": 300}
    inventory = write_inventory(lab, folder / "service.yml", {
        # Checks every second; a request queued behind the long stream of
        # test_a_long_stream_keeps_its_instance_up... waits longer than the default 60 s.
        gw.name: {**common, "vllama_gateway_check_interval": 1,
                  "vllama_gateway_queue_timeout": 300},
        e1.name: {**common, "vllama_instances": [smollm2_instance(served_name=SHARED)]},
        e2.name: {**common, "vllama_instances": [smollm2_instance(served_name=SHARED)]},
        # Room for the long stream of test_a_long_stream_keeps_its_instance_up...
        e3.name: {**common, "vllama_instances": [
            smollm2_instance(served_name=SINGLE, ctx_size=8192),
            {"name": "minilm", "task": "embed", "model": str(embedder.parent),
             "model_file": embedder.name, "served_name": EMBED, "port": 8081, "threads": 1}]},
    })
    text = inventory.read_text()
    inventory.write_text(text + f"  children:\n    vllama_gateways:\n      hosts:\n"
                                f"        {gw.name}:\n")
    result = run_cli("apply", str(inventory))
    assert result.rc == 0, result.stderr
    url = f"http://{gw.address}:4000"
    yield Service(lab, inventory, gw, [e1, e2, e3], url)

