"""The gateway's files as `render` writes them and the host gets them, checked by the real
`haproxy -c` (and `systemd-analyze verify` for its unit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vllama_provision import gateway, paths, validators
from vllama_provision.inventory import load_inventory
from vllama_provision.render import render_gateway

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventory" / "lab.yml"


@pytest.fixture
def keyed_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A controller state folder holding a key copy of every instance of the example fleet."""
    state = tmp_path / "state"
    monkeypatch.setenv("VLLAMA_STATE_DIR", str(state))
    for host in load_inventory(LAB).fleet.values():
        for inst in host.instances:
            path = paths.key_path(host.name, inst["name"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"sk-{host.name}-{inst['name']}\n")
    return state


def test_the_example_fleets_gateway_passes_haproxy(keyed_state: Path) -> None:
    plan = gateway.plan_inventory_gateways(load_inventory(LAB))["gateway-01"]
    assert {m.name: len(m.upstreams) for m in plan.models} == {
        "qwen-0-5b": 1, "qwen2.5-1.5b-instruct": 1, "qwen2.5-7b-instruct": 1,
        "smollm2-135m-instruct": 1}
    files = render_gateway(plan)
    assert validators.validate_files(files) == []
    config = next(f for f in files if f.validator == "haproxy").content
    # Every instance of the fleet, by the address and port it listens on.
    for address in ("192.0.2.11:8000", "192.0.2.12:8000", "192.0.2.12:8001",
                    "198.51.100.21:8080"):
        assert f"server engine {address}\n" in config
    assert "bind 192.0.2.10:4000\n" in config
    assert "sk-" not in "".join(f.content for f in files), "keys live in the host's maps only"


def test_haproxy_refuses_what_it_cannot_run(keyed_state: Path) -> None:
    """The validator can fail: a typo in the configuration, a Lua syntax error."""
    plan = gateway.plan_inventory_gateways(load_inventory(LAB))["gateway-01"]
    files = render_gateway(plan)
    config = next(f for f in files if f.validator == "haproxy")
    lua = next(f for f in files if f.dest.endswith(".lua"))
    good_config, good_lua = config.content, lua.content
    config.content = good_config.replace("balance leastconn", "balance fewest", 1)
    assert any("balance only supports" in p for p in validators.validate_files(files))
    config.content, lua.content = good_config, good_lua.replace("end)", "end", 1)
    problems = validators.validate_files(files)
    assert any("error in Lua file" in p and "gateway.lua" in p for p in problems), problems


def test_render_writes_the_gateway_beside_the_instances(tmp_path: Path,
                                                        keyed_state: Path) -> None:
    out = tmp_path / "out"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/bin",
           "VLLAMA_STATE_DIR": str(keyed_state), "NO_COLOR": "1"}
    result = subprocess.run([sys.executable, "-m", "vllama_provision.cli", "render", str(LAB),
                             "--out", str(out), "--validate", "--limit", "gateway-01"],
                            capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert "gateway-01: 4 gateway file(s) valid" in result.stdout
    written = sorted(p.relative_to(out / "gateway-01").as_posix()
                     for p in (out / "gateway-01").rglob("*") if p.is_file())
    # (and, the example fleet being monitored, its node exporter's command line)
    assert written == ["etc/default/prometheus-node-exporter",
                       "etc/systemd/system/vllama-gateway.service",
                       "etc/vllama/gateway/gateway.lua", "etc/vllama/gateway/haproxy.cfg",
                       "etc/vllama/gateway/models.map"]
    models = (out / "gateway-01/etc/vllama/gateway/models.map").read_text()
    assert "smollm2-135m-instruct m_smollm2-135m-instruct\n" in models


def test_the_gateway_unit_is_hardened() -> None:
    plan = gateway.plan_gateway(next(h for h in load_inventory(LAB).fleet.values()
                                     if h.gateway), [])
    unit = next(f for f in render_gateway(plan) if f.validator == "systemd").content
    assert unit.startswith("#\n# Managed by vllama-provision")
    exposure = validators.security_exposure(unit, unit_name="vllama-gateway.service")
    assert exposure <= 3.0, exposure
