"""The Grafana dashboard shipped for Grafana users (templates/grafana/vllama-fleet.json): every
panel's PromQL passes the real `promtool`, and the traffic panels ask exactly what
`status --metrics` asks, so the two never tell different stories."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from vllama_provision.metrics import QUERIES

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "templates" / "grafana" / "vllama-fleet.json"
RANGE = "$__rate_interval"  # Grafana's; promtool gets 5m


def _panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def test_every_panel_queries_valid_promql(tmp_path: Path) -> None:
    panels = _panels()
    assert len({p["id"] for p in panels}) == len(panels) >= 10
    rules = [{"record": f"vllama:panel_{p['id']}",
              "expr": target["expr"].replace(RANGE, "5m")}
             for p in panels for target in p["targets"]]
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([shutil.which("promtool") or "promtool", "check", "rules",
                             "panels.yml"], cwd=tmp_path, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_traffic_panels_ask_what_status_metrics_asks() -> None:
    exprs = {t["expr"].replace(RANGE, "WINDOW") for p in _panels() for t in p["targets"]}
    for name in ("vllm_requests", "server_requests", "p50", "p95", "tokens"):
        assert QUERIES[name] in exprs, name
    # The 5xx share by model is the gateways' errors over their requests.
    assert f"{QUERIES['model_errors']} / {QUERIES['model_requests']}" in exprs
