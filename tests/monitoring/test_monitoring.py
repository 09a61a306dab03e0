"""The fleet watched for real: Prometheus scrapes every exporter, gateway and engine the
inventory names, counts exactly the requests sent through the gateway, fires an alert within
the inventory's window when an engine stops, and Alertmanager receives it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e.conftest import smollm2_instance

from vllama_provision.gateway import gateway_key_path

from .conftest import BACKEND, CLIENT_KEY, DOWN_FOR, MODEL, UNIT, Watched

pytestmark = pytest.mark.lab


def test_every_target_of_the_fleet_is_up(watched: Watched) -> None:
    hosts = [watched.monitor, watched.gateway, *watched.engines]
    expected = {("node", f"{h.address}:9100") for h in hosts}
    expected |= {("vllama_gateway", f"{watched.gateway.address}:8405"),
                 ("prometheus", f"{watched.monitor.address}:9090")}
    found = watched.wait_for("up", lambda rows: {
        (r["metric"]["job"], r["metric"]["instance"]) for r in rows
        if r["value"][1] == "1"} >= expected)
    assert {(r["metric"]["job"], r["metric"]["instance"]) for r in found} == expected
    # Without the password, the API refuses; it answers https only, with its certificate.
    assert httpx.get(f"{watched.prometheus}/api/v1/query", params={"query": "up"},
                     timeout=10, verify=watched.trust()).status_code == 401
    plain = f"http://{watched.monitor.address}:9090/api/v1/query"
    # Go's TLS server answers plain http with 400 "Client sent an HTTP request to an HTTPS
    # server.", never the API's data.
    assert httpx.get(plain, params={"query": "up"}, auth=watched.auth(),
                     timeout=10).status_code == 400


def test_node_exporters_report_the_models_root_and_the_units(watched: Watched) -> None:
    e1 = watched.engines[0]
    roots = watched.wait_for(
        f'vllama_models_root_info{{vllama_host="{e1.name}"}}', lambda rows: len(rows) == 1)
    assert roots[0]["metric"]["path"] == "/tank/ai/models"
    mount = e1.ssh("findmnt -n -o TARGET --target /tank/ai/models").stdout.strip()
    assert roots[0]["metric"]["mountpoint"] == mount
    free = watched.query(f'node_filesystem_avail_bytes{{vllama_host="{e1.name}", '
                         f'mountpoint="{mount}"}}')
    assert free and float(free[0]["value"][1]) > 0
    units = watched.query(f'node_systemd_unit_state{{name="{UNIT}.service", state="active"}}')
    assert {(r["metric"]["vllama_host"], r["value"][1]) for r in units} == {
        (e.name, "1") for e in watched.engines}
    # The first apply switched each engine: the role said so, and that the switch finished.
    switches = watched.query("vllama_switch_unfinished")
    assert {(r["metric"]["vllama_host"], r["metric"]["vllama_instance"], r["value"][1])
            for r in switches} == {(e.name, "smollm2", "0") for e in watched.engines}
    # The units the collector reports are the vllama ones only.
    others = watched.query('count(node_systemd_unit_state{name!~"vllama-.*"})')
    assert others == []


def test_the_gateway_counts_exactly_the_requests_sent(watched: Watched) -> None:
    expr = f'sum(haproxy_backend_http_requests_total{{proxy="{BACKEND}"}})'

    def settled() -> float:
        # The value of a scrape that follows the last request: two scrape intervals later.
        time.sleep(5)
        return float(watched.query(expr)[0]["value"][1])

    before = settled()
    key = Path(gateway_key_path(CLIENT_KEY)).read_text().strip()
    sent = 7
    for _ in range(sent):
        reply = httpx.post(f"http://{watched.gateway.address}:4000/v1/chat/completions",
                           headers={"Authorization": f"Bearer {key}"}, timeout=120,
                           json={"model": MODEL, "max_tokens": 2,
                                 "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 200, reply.text
    assert settled() - before == sent


def test_status_metrics_reads_the_traffic_from_prometheus(watched: Watched,
                                                          run_cli: Any) -> None:
    """`status --metrics` right after the requests above: the engines are llama-cpp-python,
    so their figures are the gateway's counts (no latency histogram, no token counter)."""
    result = run_cli("status", str(watched.inventory), "--metrics", "--window", "1m")
    assert result.rc == 0, result.stderr[-3000:]
    hosts = result.report["hosts"]
    assert set(hosts) == {h.name for h in (watched.monitor, watched.gateway, *watched.engines)}
    assert {name: entry["status"] for name, entry in hosts.items()} == dict.fromkeys(hosts, "ok")
    figures = [hosts[e.name]["instances"][0]["metrics"] for e in watched.engines]
    assert {f["source"] for f in figures} == {"gateway"}
    assert all(f["requests_per_s"] is not None and f["requests_per_s"] >= 0 for f in figures)
    # The gateway spreads the requests: together they are the model's rate at the gateway.
    total = hosts[watched.gateway.name]["gateway_metrics"][MODEL]["requests_per_s"]
    assert total > 0
    assert sum(f["requests_per_s"] for f in figures) == pytest.approx(total, rel=0.02)
    assert {f["error_ratio"] for f in figures if f["requests_per_s"]} == {0.0}
    assert {(f["p50_ms"], f["p95_ms"], f["tokens_per_s"]) for f in figures} == {
        (None, None, None)}
    # The node exporters and the gateway's exporter are the hosts' targets, all up.
    gateway_targets = {(t["job"], t["up"]) for t in hosts[watched.gateway.name]["targets"]}
    assert gateway_targets == {("node", True), ("vllama_gateway", True)}
    assert "gateway" in result.stdout and "rates over the last 1m" in result.stdout


def test_a_stopped_engine_fires_its_alert_and_alertmanager_gets_it(watched: Watched) -> None:
    e2 = watched.engines[1]
    e2.ssh(f"systemctl stop {UNIT}")
    try:
        start = time.monotonic()
        alerts = _wait_alerts(watched, lambda found: any(
            a["labels"]["alertname"] == "VllamaUnitDown"
            and a["labels"].get("vllama_host") == e2.name for a in found), timeout=120)
        elapsed = time.monotonic() - start
        print(f"Alertmanager got the alert {elapsed:.0f} s after the engine stopped "
              f"(window {DOWN_FOR}, scrapes and evaluations every 2 s)")
        # The model keeps its other instance: no alert says it is unavailable.
        assert not [a for a in alerts if a["labels"]["alertname"] == "VllamaModelUnavailable"]
    finally:
        e2.ssh(f"systemctl start {UNIT}")


def _wait_alerts(watched: Watched, check: Any, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        reply = httpx.get(f"{watched.alertmanager}/api/v2/alerts", timeout=10)
        reply.raise_for_status()
        alerts = reply.json()
        if check(alerts):
            return alerts
        assert time.monotonic() < deadline, alerts
        time.sleep(2)


def test_a_second_apply_changes_nothing(watched: Watched, run_cli: Any) -> None:
    result = run_cli("apply", str(watched.inventory))
    assert result.rc == 0, result.stderr[-3000:]
    hosts = result.report["hosts"]
    assert {name: entry["changed"] for name, entry in hosts.items()} == dict.fromkeys(hosts, 0)


def test_a_host_added_to_the_inventory_is_scraped_after_the_next_apply(
        watched: Watched, run_cli: Any) -> None:
    spare = watched.spare
    data = yaml.safe_load(watched.inventory.read_text())
    lab = yaml.safe_load(watched.lab.inventory_path.read_text())
    data["all"]["hosts"][spare.name] = {
        **lab["all"]["hosts"][spare.name], "vllama_platform": "linux-cpu",
        "vllama_lock_wait": 0, "vllama_verify_timeout": 300,
        "vllama_instances": [smollm2_instance()]}
    watched.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    # Before the apply, `status --metrics` says Prometheus does not watch it.
    before = run_cli("status", str(watched.inventory), "--metrics", "--window", "1m")
    assert before.rc == 1, before.stderr[-3000:]
    assert before.report["hosts"][spare.name]["status"] == "failed"
    assert "scrapes nothing" in before.report["hosts"][spare.name]["error"]

    result = run_cli("apply", str(watched.inventory))
    assert result.rc == 0, result.stderr[-3000:]
    changed = {name: entry["changed"] for name, entry in result.report["hosts"].items()}
    # Only what the new host changes: itself, the gateway's routes, Prometheus' targets.
    assert {n for n, c in changed.items() if c} == {
        spare.name, watched.gateway.name, watched.monitor.name}, changed
    watched.wait_for(f'up{{vllama_host="{spare.name}", job="node"}} == 1',
                     lambda rows: len(rows) == 1, timeout=30)
    # The gateway routes to it, so its requests are counted there too.
    watched.wait_for(f'haproxy_server_http_responses_total{{proxy="{BACKEND}", '
                     f'server="u_{spare.name}.smollm2", code="2xx"}}',
                     lambda rows: len(rows) == 1, timeout=30)
    after = run_cli("status", str(watched.inventory), "--metrics", "--window", "1m")
    assert after.rc == 0, after.stderr[-3000:]
    assert after.report["hosts"][spare.name]["status"] == "ok"
