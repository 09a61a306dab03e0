"""A container instance end to end in a `--docker` lab host, and the daemon-reload rule.

The lab host (bookworm, systemd) may run a real Docker engine; its daemon.json is the one the
lab needs (`"ip-forward": false`, `"bridge": "none"`: containers use host networking, as the
rendered compose file asks) and is written before the apply, like any site's own Docker
settings, which the role never overwrites. The role installs Docker (docker.io) and Compose v2
(shipped from the controller as a CLI plugin: Debian 12 packages only Compose 1.29), loads the
locally built llama.cpp server image from its `docker save` archive (no registry is reachable:
`image` + `image_archive`), renders the compose file and the compose unit from templates/, starts
it under systemd and verifies it for real (llama.cpp's own HTTP server with SmolLM2).

What cannot run here: GPU containers. The daemon-reload rule is exercised with this real
container unit presented to the rule as a GPU container (its plan entry says backend cuda):
the one stand-in in this file.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.conftest import SMOLLM2, write_inventory
from labtools import explain, playbook

from vllama_provision.verify import read_key

from .conftest import curl
from .image_fixture import SITE_DAEMON_JSON, docker_lab, timed_image

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
UNIT = "vllama-smolbox.service"
PORT = 8080
SERVED = "smollm2-box"
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def image() -> tuple[str, Path]:
    return timed_image(TIMES)


@pytest.fixture(scope="module")
def lab(lab_factory_module: Any, lab_golden: Path) -> Any:
    return docker_lab(lab_factory_module)


@pytest.fixture(scope="module")
def inventory(lab: Any, image: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
              ) -> Path:
    reference, archive = image
    instance = {"name": "smolbox", "engine": "llamacpp", "deploy": "container",
                "model": SMOLLM2, "served_name": SERVED, "port": PORT, "ctx_size": 2048,
                "threads": 2, "image": reference, "image_archive": str(archive)}
    path = tmp_path_factory.mktemp("inv") / "containers.yml"
    return write_inventory(lab, path, {lab.hosts[0].name: {"vllama_platform": "linux-cpu",
                                                           "vllama_instances": [instance]}})


def _curl(host: Any, path: str, key: str | None = None,
          data: dict | None = None) -> tuple[int, Any]:
    return curl(host, PORT, path, key, data)


def _container_id(host: Any) -> str:
    return host.ssh("docker inspect --format '{{.Id}}' vllama-smolbox").stdout.strip()


def test_apply_runs_the_container_under_systemd_and_verifies(
        lab: Any, inventory: Path, run_cli: Any) -> None:
    host = lab.hosts[0]
    assert host.ssh("command -v dockerd", check=False).returncode != 0, "Docker preinstalled?"
    start = time.monotonic()
    result = run_cli("apply", str(inventory), timeout=1500)
    TIMES["apply_s"] = time.monotonic() - start
    assert result.rc == 0, result.stderr[-3000:]
    inst = result.instance(host.name, "smolbox")
    assert inst["verified"] is True and inst["answer"]
    # Installed by the role: the engine from Debian, Compose v2 from the controller.
    assert host.ssh("dpkg-query -W -f '${Status}' docker.io").stdout == \
        "install ok installed"
    assert host.ssh("docker compose version --short").stdout.strip().startswith("2.")
    assert host.ssh("test -x /usr/local/lib/docker/cli-plugins/docker-compose").returncode == 0
    # The site's daemon.json is untouched.
    daemon = json.loads(host.ssh("cat /etc/docker/daemon.json").stdout)
    assert daemon == SITE_DAEMON_JSON
    print(f"container timings: {TIMES}")


def test_the_unit_runs_the_rendered_compose_file(lab: Any, image: tuple[str, Path]) -> None:
    host = lab.hosts[0]
    assert host.ssh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    unit = host.ssh(f"systemctl cat {UNIT}").stdout
    assert ("ExecStart=/usr/bin/docker compose --project-name vllama-smolbox -f "
            "/opt/vllama/instances/smolbox/current/compose.yml up") in unit
    assert "--pull never" in unit
    compose = yaml.safe_load(host.ssh(
        "cat /opt/vllama/instances/smolbox/current/compose.yml").stdout)
    engine = compose["services"]["engine"]
    assert engine["image"] == image[0]
    assert engine["network_mode"] == "host"
    assert engine["command"][engine["command"].index("--alias") + 1] == SERVED
    state = json.loads(host.ssh("docker inspect vllama-smolbox").stdout)[0]
    assert state["State"]["Running"] is True
    assert state["State"]["Health"]["Status"] == "healthy"
    assert state["Config"]["Labels"]["org.vllama.instance"] == "smolbox"
    assert state["Config"]["Image"] == image[0]
    assert state["HostConfig"]["CapDrop"] == ["ALL"]
    # The engine process belongs to the container, started by systemd's compose client.
    assert host.ssh(f"systemctl show -p MainPID --value {UNIT}").stdout.strip() != "0"


def test_endpoint_answers_through_llama_cpps_server(lab: Any) -> None:
    host = lab.hosts[0]
    key = read_key(host.name, "smolbox")
    assert key
    assert _curl(host, "/health")[0] == 200
    code, _ = _curl(host, "/v1/models")
    assert code == 401
    code, models = _curl(host, "/v1/models", key)
    assert code == 200 and SERVED in [m["id"] for m in models["data"]]
    code, reply = _curl(host, "/v1/chat/completions", key, {
        "model": SERVED, "temperature": 0, "max_tokens": 16,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert code == 200 and reply["choices"][0]["message"]["content"].strip()


def _reload_play(tmp: Path, backend: str) -> Path:
    plan = {"instances": [{"name": "smolbox", "deploy": "container", "backend": backend,
                           "paths": {"unit_name": UNIT}}]}
    play = tmp / f"reload-{backend}.yml"
    play.write_text(yaml.safe_dump([{
        "hosts": "all", "gather_facts": False, "vars": {"_vllama_plan": plan},
        "tasks": [{"name": "Run the role's daemon-reload tasks.",
                   "ansible.builtin.include_tasks":
                       str(ROOT / "roles/vllama/tasks/daemon-reload.yml")}]}]))
    return play


def _journal_order(host: Any, since: str) -> list[str]:
    lines = host.ssh(f"journalctl --no-pager -o cat --since '{since}' _PID=1").stdout
    events = []
    for line in lines.splitlines():
        if re.search(r"Stopp(ed|ing) vllama-smolbox\.service", line):
            events.append("stop")
        elif line.startswith("Reloading"):
            events.append("reload")
        elif re.search(r"Start(ed|ing) vllama-smolbox\.service", line):
            events.append("start")
    return events


def test_daemon_reload_never_runs_while_a_gpu_container_runs(
        lab: Any, inventory: Path, tmp_path: Path) -> None:
    """STAND-IN: this CPU container is presented to the rule as a GPU container (no GPU here).
    The host's own journal (PID 1) gives the order: stop, reload, start; and the container is
    a new one afterwards, serving again."""
    host = lab.hosts[0]
    before = _container_id(host)
    since = host.ssh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    time.sleep(1.1)
    proc = playbook(inventory, _reload_play(tmp_path, "cuda"), timeout=600)
    assert proc.returncode == 0, explain(proc)
    order = [t for t in re.findall(r"TASK \[([^\]]+)\]", proc.stdout)]
    assert order.index("Stop the running GPU containers before systemd reloads.") < \
        order.index("Reload systemd (no GPU container is running now).") < \
        order.index("Start the GPU containers stopped for the reload (verified with every "
                    "instance later).")
    events = _journal_order(host, since)
    assert "reload" in events and "stop" in events and "start" in events, events
    assert events.index("stop") < events.index("reload") < len(events) - 1 - \
        events[::-1].index("start"), events
    assert host.ssh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert _container_id(host) != before
    assert _curl(host, "/health")[0] == 200


def test_daemon_reload_leaves_cpu_containers_running(
        lab: Any, inventory: Path, tmp_path: Path) -> None:
    host = lab.hosts[0]
    before = _container_id(host)
    proc = playbook(inventory, _reload_play(tmp_path, "cpu"), timeout=600)
    assert proc.returncode == 0, explain(proc)
    assert _container_id(host) == before
    print(f"container timings: {TIMES}")
