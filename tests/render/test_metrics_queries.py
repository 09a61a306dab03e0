"""The PromQL of `status --metrics`, evaluated by the real Prometheus engine (`promtool test
rules`) on series shaped as each exporter writes them: vLLM's HTTP counters and end-to-end
histogram, llama-server's token counter, HAProxy's per-server and per-backend responses. Each
query must pick its own series and leave the look-alikes (probes, the gateway's health-check
proxies, other jobs) out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from vllama_provision.metrics import QUERIES

VLLM = 'job="vllm", vllama_host="gpu-01", vllama_instance="qwen"'
WINDOW = "5m"


def _series(name: str, labels: str, per_minute: float) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": f"0+{per_minute}x20"}


SERIES = [
    # vLLM: 54 answered and 6 failed chat requests a minute; its probes and /metrics apart.
    _series("http_requests_total", VLLM + ', handler="/v1/chat/completions", method="POST", '
            'status="2xx"', 54),
    _series("http_requests_total", VLLM + ', handler="/v1/chat/completions", method="POST", '
            'status="5xx"', 6),
    _series("http_requests_total", VLLM + ', handler="/metrics", method="GET", status="2xx"',
            600),
    # Half the requests end within 0.5 s, all within 1 s.
    _series("vllm:e2e_request_latency_seconds_bucket", VLLM + ', le="0.1"', 0),
    _series("vllm:e2e_request_latency_seconds_bucket", VLLM + ', le="0.5"', 30),
    _series("vllm:e2e_request_latency_seconds_bucket", VLLM + ', le="1.0"', 60),
    _series("vllm:e2e_request_latency_seconds_bucket", VLLM + ', le="+Inf"', 60),
    _series("vllm:generation_tokens_total", VLLM + ', model_name="Qwen", engine="0"', 1200),
    _series("llamacpp:tokens_predicted_total", 'job="llama_server/cpu-01/smol", '
            'vllama_host="cpu-01", vllama_instance="smol"', 600),
    # Two gateways route to cpu-01/smol: 57 + 60 answers, 3 of them 5xx, a minute.
    _series("haproxy_server_http_responses_total", 'job="vllama_gateway", '
            'vllama_host="gw-01", proxy="m_smol", server="u_cpu-01.smol", code="2xx"', 57),
    _series("haproxy_server_http_responses_total", 'job="vllama_gateway", '
            'vllama_host="gw-01", proxy="m_smol", server="u_cpu-01.smol", code="5xx"', 3),
    _series("haproxy_server_http_responses_total", 'job="vllama_gateway", '
            'vllama_host="gw-02", proxy="m_smol", server="u_cpu-01.smol", code="2xx"', 60),
    # The instance's own proxy, where the health checks pass: not requests.
    _series("haproxy_server_http_responses_total", 'job="vllama_gateway", '
            'vllama_host="gw-01", proxy="u_cpu-01.smol", server="engine", code="2xx"', 60),
    _series("haproxy_backend_http_responses_total", 'job="vllama_gateway", '
            'vllama_host="gw-01", proxy="m_smol", code="2xx"', 57),
    _series("haproxy_backend_http_responses_total", 'job="vllama_gateway", '
            'vllama_host="gw-01", proxy="m_smol", code="5xx"', 3),
    _series("haproxy_backend_http_responses_total", 'job="vllama_gateway", '
            'vllama_host="gw-01", proxy="u_cpu-01.smol", code="2xx"', 60),
    {"series": 'up{job="vllm", instance="192.0.2.14:8000", vllama_host="gpu-01", '
               'vllama_instance="qwen"}', "values": "1x20"},
]

INSTANCE = {"vllama_host": "gpu-01", "vllama_instance": "qwen"}
EXPECTED: dict[str, list[tuple[dict[str, str], float]]] = {
    "vllm_requests": [(INSTANCE, 1.0)],
    "vllm_errors": [(INSTANCE, 0.1)],
    "p50": [(INSTANCE, 0.5)],
    "p95": [(INSTANCE, 0.95)],
    "tokens": [(INSTANCE, 20.0), ({"vllama_host": "cpu-01", "vllama_instance": "smol"}, 10.0)],
    "server_requests": [({"server": "u_cpu-01.smol"}, 2.0)],
    "server_errors": [({"server": "u_cpu-01.smol"}, 0.05)],
    "model_requests": [({"vllama_host": "gw-01", "proxy": "m_smol"}, 1.0)],
    "model_errors": [({"vllama_host": "gw-01", "proxy": "m_smol"}, 0.05)],
    "up": [({"__name__": "up", "job": "vllm", "instance": "192.0.2.14:8000",
             "vllama_host": "gpu-01", "vllama_instance": "qwen"}, 1.0)],
}


def _labels(labels: dict[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items() if k != "__name__")
    return f"{labels.get('__name__', '')}{{{inner}}}"


def test_every_metrics_query_picks_its_series(tmp_path: Path) -> None:
    assert set(EXPECTED) == set(QUERIES)
    tests: list[dict[str, Any]] = [{
        "interval": "1m", "input_series": SERIES,
        "promql_expr_test": [
            {"expr": QUERIES[name].replace("WINDOW", WINDOW), "eval_time": "15m",
             "exp_samples": [{"labels": _labels(labels), "value": value}
                             for labels, value in expected]}
            for name, expected in EXPECTED.items()]}]
    (tmp_path / "rules.yml").write_text("groups: []\n")
    (tmp_path / "test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([shutil.which("promtool") or "promtool", "test", "rules",
                             "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_query_that_picks_the_wrong_series_fails(tmp_path: Path) -> None:
    """The check above can fail: the health-check proxy counted as requests is caught."""
    wrong = QUERIES["server_requests"].replace('proxy=~"m_.+"', 'proxy=~".+"')
    tests = [{"interval": "1m", "input_series": SERIES, "promql_expr_test": [
        {"expr": wrong.replace("WINDOW", WINDOW), "eval_time": "15m",
         "exp_samples": [{"labels": '{server="u_cpu-01.smol"}', "value": 2.0}]}]}]
    (tmp_path / "rules.yml").write_text("groups: []\n")
    (tmp_path / "test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "engine" in result.stdout + result.stderr
