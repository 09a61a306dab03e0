"""The fleet watched, on lab hosts: a monitoring host (Prometheus, over https with a self-signed
certificate, and Alertmanager from the OS packages), a gateway and two llama.cpp engine hosts
serving one model, applied once for the whole tier, with short scrape, evaluation and alert
windows so alerts fire within seconds."""

from __future__ import annotations

import dataclasses
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e.conftest import engine_wheel, run_cli, smollm2_instance, write_inventory

from vllama_provision import monitoring

__all__ = ["engine_wheel", "run_cli"]

MODEL = "smollm2-135m-instruct"
BACKEND = f"m_{MODEL}"
UNIT = "vllama-smollm2"
DOWN_FOR = "10s"
CLIENT_KEY = "watched"


@dataclasses.dataclass
class Watched:
    lab: Any
    inventory: Path
    monitor: Any
    gateway: Any
    engines: list[Any]
    spare: Any  # booted with the others, added to the inventory by a test
    certificate: Path  # Prometheus answers https with it (self-signed for its address)

    @property
    def prometheus(self) -> str:
        return f"https://{self.monitor.address}:9090"

    @property
    def alertmanager(self) -> str:
        return f"http://{self.monitor.address}:9093"

    def auth(self) -> tuple[str, str]:
        path = Path(monitoring.password_path(self.monitor.name))
        return ("vllama", path.read_text().strip())

    def trust(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        context.load_verify_locations(self.certificate)
        return context

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query through Prometheus' HTTP API, with its basic auth."""
        reply = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr},
                          auth=self.auth(), timeout=30, verify=self.trust())
        reply.raise_for_status()
        return reply.json()["data"]["result"]

    def wait_for(self, expr: str, check: Any, timeout: float = 90) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.query(expr)
            if check(found):
                return found
            assert time.monotonic() < deadline, f"{expr}: {found}"
            time.sleep(1)


@pytest.fixture(scope="module")
def watched(lab_factory_module: Any, lab_golden: Path, engine_wheel: list[Path],
            run_cli: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    lab = lab_factory_module(5)
    mon, gw, e1, e2, spare = lab.hosts
    common = {"vllama_platform": "linux-cpu", "vllama_lock_wait": 0,
              "vllama_verify_timeout": 300}
    # Prometheus' own certificate, self-signed for the monitoring host's address.
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "prometheus.crt", folder / "prometheus.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    f"/CN={mon.name}", "-addext", f"subjectAltName=IP:{mon.address}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    key.chmod(0o600)
    inventory = write_inventory(lab, tmp_path_factory.mktemp("watched") / "watched.yml", {
        mon.name: {**common, "vllama_monitoring_scrape_interval": "2s",
                   "vllama_monitoring_tls_cert_file": str(cert),
                   "vllama_monitoring_tls_key_file": str(key),
                   "vllama_monitoring_evaluation_interval": "2s",
                   "vllama_monitoring_down_for": DOWN_FOR},
        # Its own client key name: the gateway tier (maybe running beside this one) rotates
        # the controller's "default" key.
        gw.name: {**common, "vllama_gateway_check_interval": 1,
                  "vllama_gateway_keys": [{"name": CLIENT_KEY}]},
        e1.name: {**common, "vllama_instances": [smollm2_instance()]},
        e2.name: {**common, "vllama_instances": [smollm2_instance()]},
    })
    data = yaml.safe_load(inventory.read_text())
    del data["all"]["hosts"][spare.name]  # not in the fleet yet
    inventory.write_text(yaml.safe_dump(data, sort_keys=False)
                         + f"  children:\n    vllama_gateways:\n      hosts:\n"
                           f"        {gw.name}:\n    vllama_monitoring:\n      hosts:\n"
                           f"        {mon.name}:\n")
    result = run_cli("apply", str(inventory))
    assert result.rc == 0, result.stderr[-3000:]
    yield Watched(lab, inventory, mon, gw, [e1, e2], spare, cert)
