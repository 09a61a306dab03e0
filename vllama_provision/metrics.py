"""``vllama-provision status --metrics``: the fleet's traffic, read from its Prometheus.

Per host and instance, over a window (default the last 5 minutes): the request rate, the share
of 5xx answers, p50/p95 latency and generated tokens per second, each from the one source that
can tell, and ``None`` (``-`` in the table) where none can:

==================  ===========================  ==========================  ================
engine              requests, errors             p50/p95 latency             tokens/s
==================  ===========================  ==========================  ================
vLLM                its HTTP counters            its end-to-end histogram    its counter
llama-server        the gateways' server counts  none (no histogram)         its counter
llama-cpp-python    the gateways' server counts  none (no /metrics)          none
==================  ===========================  ==========================  ================

The gateways' counts are those of each instance as a server of its model's backend (HAProxy's
exporter; health checks are counted apart), summed over every gateway; an instance no monitored
gateway serves has no request figures unless its engine counts them. HAProxy keeps no latency
histogram, so gateway-served llama.cpp instances have no percentiles. Every gateway host also
gets its models' totals. A host whose targets Prometheus does not scrape, or scrapes as down,
is reported failed (exit 1), with the targets named.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from vllama_provision import monitoring
from vllama_provision.errors import UsageError, VllamaError
from vllama_provision.gateway import upstream_id
from vllama_provision.report import HostReport, InstanceReport, Report
from vllama_provision.schema import DURATION_HELP, DURATION_PATTERN

DEFAULT_WINDOW = "5m"
ROUTE = r"/v1/.+"  # vLLM's OpenAI routes, not its probes

# PromQL, with WINDOW for the range. Engine series carry the inventory's labels vllama_host and
# vllama_instance (the scrape configuration monitoring.py plans); the gateways' carry server.
BY_INSTANCE = "vllama_host, vllama_instance"
QUERIES: dict[str, str] = {
    "vllm_requests": f'sum by ({BY_INSTANCE}) (rate(http_requests_total{{job="vllm", '
                     f'handler=~"{ROUTE}"}}[WINDOW]))',
    "vllm_errors": f'sum by ({BY_INSTANCE}) (rate(http_requests_total{{job="vllm", '
                   f'handler=~"{ROUTE}", status="5xx"}}[WINDOW]))',
    "p50": f"histogram_quantile(0.5, sum by ({BY_INSTANCE}, le) "
           f'(rate(vllm:e2e_request_latency_seconds_bucket{{job="vllm"}}[WINDOW])))',
    "p95": f"histogram_quantile(0.95, sum by ({BY_INSTANCE}, le) "
           f'(rate(vllm:e2e_request_latency_seconds_bucket{{job="vllm"}}[WINDOW])))',
    "tokens": f'sum by ({BY_INSTANCE}) (rate(vllm:generation_tokens_total{{job="vllm"}}'
              f"[WINDOW])) or sum by ({BY_INSTANCE}) "
              f'(rate(llamacpp:tokens_predicted_total{{job=~"llama_server/.+"}}[WINDOW]))',
    "server_requests": 'sum by (server) (rate(haproxy_server_http_responses_total'
                       '{job="vllama_gateway", proxy=~"m_.+"}[WINDOW]))',
    "server_errors": 'sum by (server) (rate(haproxy_server_http_responses_total'
                     '{job="vllama_gateway", proxy=~"m_.+", code="5xx"}[WINDOW]))',
    "model_requests": 'sum by (vllama_host, proxy) (rate(haproxy_backend_http_responses_total'
                      '{job="vllama_gateway", proxy=~"m_.+"}[WINDOW]))',
    "model_errors": 'sum by (vllama_host, proxy) (rate(haproxy_backend_http_responses_total'
                    '{job="vllama_gateway", proxy=~"m_.+", code="5xx"}[WINDOW]))',
    "up": "up",
}


class MetricsError(VllamaError):
    """Prometheus cannot be asked (down, refusing the password, answering an error)."""


@dataclass
class Figures:
    """One instance's (or one gateway model's) traffic over the window; None: nobody can tell."""

    source: str  # vllm | gateway | "" (no source counts its requests)
    requests_per_s: float | None = None
    error_ratio: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    tokens_per_s: float | None = None


Series = dict[tuple[str, ...], float]
Ask = Callable[[str, float], list[dict[str, Any]]]  # (PromQL, evaluation time) -> rows


def check_window(window: str) -> str:
    if not re.fullmatch(DURATION_PATTERN, window):
        raise UsageError(f"--window: {window!r} is not {DURATION_HELP}")
    return window


def prometheus_client(endpoint: str, password: str, timeout: float = 15,
                      verify: Any = True) -> Ask:
    """Instant queries against Prometheus' HTTP API, with the monitoring host's basic auth
    (``verify``: what its certificate is checked against, monitoring.trust). Errors name the
    endpoint, never the password."""

    def ask(expr: str, at: float) -> list[dict[str, Any]]:
        url = f"{endpoint}/api/v1/query"
        try:
            reply = httpx.post(url, data={"query": expr, "time": f"{at:.3f}"},
                               auth=(monitoring.USER, password), timeout=timeout,
                               verify=verify)
        except httpx.HTTPError as exc:
            raise MetricsError(f"Prometheus at {endpoint} does not answer ({exc}); is the "
                               "monitoring host applied and reachable from here?") from None
        if reply.status_code == 401:
            raise MetricsError(f"Prometheus at {endpoint} refused the password the controller "
                               "holds for it; apply the monitoring host again") from None
        try:
            body = reply.json()
        except ValueError:
            body = {}
        if reply.status_code != 200 or body.get("status") != "success":
            raise MetricsError(f"Prometheus at {endpoint} answered HTTP {reply.status_code} to "
                               f"{expr!r}: {body.get('error') or reply.text[:200]}")
        return list(body["data"]["result"])

    return ask


def _series(rows: list[dict[str, Any]], labels: Sequence[str]) -> Series:
    found: Series = {}
    for row in rows:
        value = float(row["value"][1])
        if not math.isnan(value):
            found[tuple(row["metric"].get(label, "") for label in labels)] = value
    return found


def _ratio(errors: float | None, requests: float | None) -> float | None:
    if requests is None or requests <= 0:
        return None  # no request in the window: no ratio to tell
    return (errors or 0.0) / requests


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or math.isinf(seconds) else seconds * 1000


def collect(ask: Ask, hosts: Sequence[Any], plans: dict[str, Any], gateways: dict[str, Any],
            window: str, endpoint: str) -> Report:
    """The metrics report of ``hosts`` (HostSpecs, in order) with their ``plans`` (HOST ->
    HostPlan) and the fleet's gateway ``gateways`` (HOST -> GatewayPlan), from ``ask``."""
    # One evaluation time for every query: the figures of one report come from the same
    # samples (a scrape landing between two queries would otherwise shift one of them).
    at = time.time()
    found = {name: ask(expr.replace("WINDOW", window), at) for name, expr in QUERIES.items()}
    inst_keys = ("vllama_host", "vllama_instance")
    engine = {name: _series(found[name], inst_keys)
              for name in ("vllm_requests", "vllm_errors", "p50", "p95", "tokens")}
    server = {name: _series(found[name], ("server",))
              for name in ("server_requests", "server_errors")}
    model = {name: _series(found[name], ("vllama_host", "proxy"))
             for name in ("model_requests", "model_errors")}

    report = Report("status", summary_extra={"prometheus": endpoint, "window": window})
    targets = _targets(found["up"])
    scraped = {(host, t["instance"]) for host, rows in targets.items() for t in rows
               if t["job"] == "vllm" and t["up"]}
    for host in hosts:
        entry = report.host(host.name)
        plan = plans[host.name]
        for inst in plan.instances:
            key = (host.name, inst.name)
            uid = upstream_id(host.name, inst.name)
            figures = Figures(source="")
            if inst.server == "vllm":
                # An engine scraped that has served nothing yet has no request series.
                requests = engine["vllm_requests"].get(key, 0.0 if key in scraped else None)
                figures = Figures("vllm", requests,
                                  _ratio(engine["vllm_errors"].get(key), requests),
                                  _ms(engine["p50"].get(key)), _ms(engine["p95"].get(key)))
            elif gateways:  # every gateway routes every instance of the fleet
                requests = server["server_requests"].get((uid,))
                figures = Figures("gateway", requests,
                                  _ratio(server["server_errors"].get((uid,)), requests))
            if inst.server in ("vllm", "llama-server"):
                figures.tokens_per_s = engine["tokens"].get(key)
            _instance(entry, inst, figures)
        if host.name in gateways:
            entry.extra["gateway_metrics"] = {
                m.name: asdict(Figures("gateway", r, _ratio(
                    model["model_errors"].get((host.name, m.backend)), r)))
                for m in gateways[host.name].models
                for r in [model["model_requests"].get((host.name, m.backend))]}
        _health(entry, targets.get(host.name, []))
    return report


def _instance(entry: HostReport, inst: Any, figures: Figures) -> None:
    item: InstanceReport = entry.instance(inst.name)
    item.engine, item.engine_version, item.deploy = (inst.engine, inst.engine_version,
                                                     inst.deploy)
    item.endpoint, item.served_name = inst.endpoint, inst.served_name
    item.tokens_per_s = figures.tokens_per_s
    item.extra["server"] = inst.server
    item.extra["metrics"] = asdict(figures)


def _targets(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_host: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        labels = row["metric"]
        by_host.setdefault(labels.get("vllama_host", ""), []).append(
            {"job": labels.get("job", ""), "target": labels.get("instance", ""),
             "instance": labels.get("vllama_instance", ""), "up": float(row["value"][1]) == 1})
    return by_host


def _health(entry: HostReport, targets: list[dict[str, Any]]) -> None:
    entry.extra["targets"] = sorted(targets, key=lambda t: (t["job"], t["target"]))
    down = [f"{t['job']} {t['target']}" for t in entry.extra["targets"] if not t["up"]]
    if not targets:
        entry.status, entry.error = "failed", ("Prometheus scrapes nothing of this host (apply "
                                               "the monitoring host after adding it)")
    elif down:
        entry.status, entry.error = "failed", "down in Prometheus: " + ", ".join(down)


def _number(value: float | None, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}{unit}"


def render(report: Report) -> str:
    """The metrics table: one line per instance, one per model of a gateway host."""
    header = ("HOST", "STATUS", "INSTANCE", "MODEL", "SOURCE", "REQ/S", "5XX", "P50", "P95",
              "TOKENS/S")
    rows: list[tuple[str, ...]] = [header]
    notes: list[str] = []
    for name, h in report.hosts.items():
        lines: list[tuple[str, str, dict[str, Any]]] = [
            (i.name, i.served_name, i.extra["metrics"]) for i in h.instances]
        lines += [("(gateway)", model, figures)
                  for model, figures in h.extra.get("gateway_metrics", {}).items()]
        for index, (label, model, f) in enumerate(lines or [("-", "-", asdict(Figures("")))]):
            ratio = f["error_ratio"]
            rows.append((name if index == 0 else "", h.status if index == 0 else "", label,
                         model, f["source"] or "-", _number(f["requests_per_s"]),
                         "-" if ratio is None else f"{ratio * 100:.1f}%",
                         _number(f["p50_ms"], " ms", 4), _number(f["p95_ms"], " ms", 4),
                         _number(f["tokens_per_s"])))
        if h.error:
            notes.append(f"{name}: {h.error}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines_out = [f"Prometheus {report.summary_extra['prometheus']}, rates over the last "
                 f"{report.summary_extra['window']} ('-': no source can tell, or no request)"]
    lines_out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]
    return "\n".join(lines_out + notes)
