"""The fleet as one service: the gateway's plan and the fleet rules it needs.

A gateway host (inventory group ``vllama_gateways``) runs HAProxy in front of every instance of
the inventory: requests to ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``
are routed by the body's ``model`` to the instances serving that name. What it routes to is a
function of the whole fleet, so the plan here reads every host of the inventory, whatever
``--limit`` says; the CLI (``plan``, ``render``, static validation) and the role's action
plugin (``vllama_gateway_plan``) call the same functions.

Shape of the HAProxy configuration (templates/haproxy/vllama-gateway.cfg.j2):

* one frontend: client key check, body size, routing by ``model`` through a map of served
  names to backends, and answers in OpenAI's error format;
* one backend per served name (``m_*``), ``balance leastconn``, one server per instance;
* one small proxy per instance (``u_*``) on a unix socket, between the two: it adds that
  instance's own API key (HAProxy cannot set a header per server) and maps the health check
  to the probe that engine answers without queueing behind a running generation.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vllama_provision import facts as fact_cache
from vllama_provision import gpu, paths
from vllama_provision.fleet import default_bind
from vllama_provision.inventory import HostSpec
from vllama_provision.planner import Check, plan_host

CONFIG_DIR = "/etc/vllama/gateway"
RUN_DIR = "/run/vllama-gateway"
STATE_DIR = "/var/lib/vllama-gateway"
UNIT = "vllama-gateway.service"
# The path HAProxy's health checks ask; each instance's proxy maps it to its engine's probe.
HEALTH_PATH = "/vllama/health"
# Probes a busy engine answers at once. llama-cpp-python's /v1/models waits for the running
# generation (one at a time, behind a lock); its FastAPI schema does not.
HEALTH_PROBE = {"llama-cpp-python": "/openapi.json", "vllm": "/health", "llama-server": "/health"}
# llama-cpp-python serves one request at a time: the gateway queues, not the engine.
MAXCONN = {"llama-cpp-python": 1}
# The routes the gateway serves by the body's model.
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")

FactsFor = Callable[[HostSpec], gpu.HostFacts | None]


@dataclass
class Upstream:
    """One instance behind the gateway."""

    id: str
    host: str
    instance: str
    served_name: str
    server: str
    address: str
    port: int
    maxconn: int
    health_probe: str
    socket: str
    key_copy: str


@dataclass
class ModelRoute:
    name: str
    backend: str
    upstreams: list[Upstream] = field(default_factory=list)
    task: str = "chat"  # chat | embed (the fleet rules keep one task per name)
    embedding_dim: int = 0  # embed: the model's vector length when the controller knows it


@dataclass
class GatewayPlan:
    host: str
    bind_address: str
    port: int
    endpoint: str
    settings: dict[str, int]
    keys: list[dict[str, str]]
    models: list[ModelRoute]
    paths: dict[str, str]
    files: list[dict[str, str]]
    checks: list[Check] = field(default_factory=list)
    routes: list[str] = field(default_factory=lambda: list(ROUTES))
    health_path: str = HEALTH_PATH
    # Controller-side certificate and key of the listener ("" each: plain http).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # The metrics listener (HAProxy's Prometheus exporter), when the inventory has a monitoring
    # group (0: none).
    metrics_port: int = 0

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def upstreams(self) -> list[Upstream]:
        return [u for m in self.models for u in m.upstreams]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["upstreams"] = [asdict(u) for u in self.upstreams]
        data["tls"] = self.tls
        return data


def _proxy_name(prefix: str, text: str) -> str:
    """A HAProxy proxy name for ``text``: readable, unique (a hash when characters changed)."""
    clean = re.sub(r"[^A-Za-z0-9_.:-]", "_", text)
    if clean != text:
        clean += "_" + hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{prefix}_{clean}"


def gateway_paths() -> dict[str, str]:
    return {"config_dir": CONFIG_DIR, "config": f"{CONFIG_DIR}/haproxy.cfg",
            "lua": f"{CONFIG_DIR}/gateway.lua", "models_map": f"{CONFIG_DIR}/models.map",
            "clients_map": f"{CONFIG_DIR}/clients.map",
            "upstreams_map": f"{CONFIG_DIR}/upstreams.map", "tls_pem": f"{CONFIG_DIR}/tls.pem",
            "run_dir": RUN_DIR,
            "admin_socket": f"{RUN_DIR}/admin.sock", "state_dir": STATE_DIR,
            "server_state": f"{STATE_DIR}/server-state", "unit_name": UNIT,
            "unit": f"/etc/systemd/system/{UNIT}"}


def gateway_files(p: dict[str, str]) -> list[dict[str, str]]:
    """Rendered files of a gateway host, in the order they are written (the configuration last:
    its validation reads the others)."""
    return [
        {"template": "haproxy/vllama-gateway.lua.j2", "dest": p["lua"], "mode": "0644",
         "validator": ""},
        {"template": "haproxy/vllama-gateway-models.map.j2", "dest": p["models_map"],
         "mode": "0644", "validator": ""},
        {"template": "systemd/vllama-gateway.service.j2", "dest": p["unit"], "mode": "0644",
         "validator": "systemd"},
        {"template": "haproxy/vllama-gateway.cfg.j2", "dest": p["config"], "mode": "0644",
         "validator": "haproxy"},
    ]


def upstream_id(host: str, instance: str) -> str:
    """The name of an instance in every gateway (its server in its model's backend)."""
    return _proxy_name("u", f"{host}.{instance}")


def admin_socket() -> str:
    return gateway_paths()["admin_socket"]


def _upstream(host: HostSpec, inst: Any) -> Upstream:
    uid = upstream_id(host.name, inst.name)
    bind = inst.bind_address
    address = host.ansible_host if bind in ("0.0.0.0", "::") else bind
    key_copy = inst.api_key_file or str(paths.key_path(host.name, inst.name))
    digest = hashlib.sha256(uid.encode()).hexdigest()[:16]
    return Upstream(id=uid, host=host.name, instance=inst.name, served_name=inst.served_name,
                    server=inst.server, address=address, port=inst.port,
                    maxconn=MAXCONN.get(inst.server, 0),
                    health_probe=HEALTH_PROBE.get(inst.server, "/health"),
                    socket=f"{RUN_DIR}/{digest}.sock", key_copy=key_copy)


def plan_routes(fleet: Sequence[HostSpec], facts_for: FactsFor
                ) -> tuple[list[ModelRoute], list[Check]]:
    """Every served name of the fleet with the instances serving it."""
    routes: dict[str, ModelRoute] = {}
    checks: list[Check] = []
    for host in sorted(fleet, key=lambda h: h.name):
        if not host.instances:
            continue
        plan = plan_host(host, facts_for(host))
        if plan.platform is None:
            checks.append(Check("not-evaluated", "gateway",
                                f"{host.name}: left out, its platform is unknown (set "
                                "vllama_platform or run `vllama-provision facts INVENTORY "
                                "--save`)"))
            continue
        for inst in plan.instances:
            route = routes.setdefault(inst.served_name, ModelRoute(
                inst.served_name, _proxy_name("m", inst.served_name), task=inst.task))
            route.upstreams.append(_upstream(host, inst))
            route.embedding_dim = route.embedding_dim or inst.embedding_dim
    return [routes[name] for name in sorted(routes)], checks


def plan_gateway(host: HostSpec, routes: list[ModelRoute], checks: Sequence[Check] = (),
                 *, key_present: Callable[[str], bool] | None = None,
                 monitored: bool = False) -> GatewayPlan:
    """The gateway of one host. ``key_present`` tells whether the controller holds an
    instance's key copy (an instance never applied has none: it is left out until it is);
    ``monitored``: the inventory has a monitoring group, which scrapes the gateway's metrics."""
    bind = host.var("vllama_gateway_bind_address") or default_bind(host)
    port = int(host.var("vllama_gateway_port"))
    connect = host.ansible_host if bind in ("0.0.0.0", "::") else bind
    url_host = f"[{connect}]" if ":" in connect else connect
    settings = {
        "max_body": host.var("vllama_gateway_max_body"),
        "timeout": host.var("vllama_gateway_timeout"),
        "connect_timeout": host.var("vllama_gateway_connect_timeout"),
        "queue_timeout": host.var("vllama_gateway_queue_timeout"),
        "check_interval": host.var("vllama_gateway_check_interval"),
        "retry_after": host.var("vllama_gateway_retry_after"),
        "maxconn": host.var("vllama_gateway_maxconn"),
    }
    keys = [{"name": str(k["name"]), "key_file": str(k.get("key_file") or ""),
             "copy": str(k.get("key_file") or gateway_key_path(str(k["name"])))}
            for k in host.var("vllama_gateway_keys")]
    plan_checks = list(checks)
    present = key_present or (lambda path: True)
    kept: list[ModelRoute] = []
    for route in routes:
        upstreams = []
        for up in route.upstreams:
            if present(up.key_copy):
                upstreams.append(up)
            else:
                plan_checks.append(Check(
                    "warn", "gateway", f"{up.host}/{up.instance} is left out: the controller "
                    f"has no copy of its key yet (apply {up.host} first)"))
        if len(upstreams) == 1:
            plan_checks.append(Check("warn", "gateway", f"{route.name!r} has one instance "
                                     f"({upstreams[0].host}/{upstreams[0].instance}): it has a "
                                     "gap while that instance switches releases"))
        kept.append(replace(route, upstreams=upstreams))
    p = gateway_paths()
    cert = str(host.var("vllama_gateway_tls_cert_file") or "")
    scheme = "https" if cert else "http"
    return GatewayPlan(host=host.name, bind_address=bind, port=port,
                       endpoint=f"{scheme}://{url_host}:{port}", settings=settings, keys=keys,
                       models=kept, paths=p, files=gateway_files(p), checks=plan_checks,
                       tls_cert_file=cert,
                       tls_key_file=str(host.var("vllama_gateway_tls_key_file") or ""),
                       metrics_port=int(host.var("vllama_gateway_metrics_port"))
                       if monitored else 0)


def gateway_key_path(name: str) -> str:
    """The controller's private copy of a generated client key of the gateways."""
    return str(paths.keys_dir() / "_gateway" / f"{name}.key")


def plan_fleet_gateways(fleet: Sequence[HostSpec], facts_for: FactsFor,
                        key_present: Callable[[str], bool] | None = None
                        ) -> dict[str, GatewayPlan]:
    """The gateway plan of every gateway host of the fleet."""
    if not any(h.gateway for h in fleet):
        return {}
    routes, checks = plan_routes(fleet, facts_for)
    monitored = any(h.monitoring for h in fleet)
    return {h.name: plan_gateway(h, routes, checks, key_present=key_present,
                                 monitored=monitored)
            for h in fleet if h.gateway}


def template_vars(plan: GatewayPlan, managed: str) -> dict[str, Any]:
    """What the gateway's templates see, on the host and in ``render`` alike."""
    return {"_vllama_gateway": plan.to_dict(), "ansible_managed": managed}


def key_copy_present(path: str) -> bool:
    """Whether the controller holds a key copy (an instance's or a client key's)."""
    return Path(path).is_file()


def plan_inventory_gateways(inventory: Any) -> dict[str, GatewayPlan]:
    """The gateways of a loaded inventory (``inventory.Inventory``), as the CLI plans them:
    the whole fleet, with the controller's cached facts and key copies."""
    return plan_fleet_gateways(list(inventory.fleet.values()),
                               lambda host: fact_cache.load(inventory.path, host.name),
                               key_present=key_copy_present)


class GatewayKeyError(ValueError):
    """A key the gateway needs cannot be read or used (the message never holds the key)."""


def _read_key(path: str, what: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise GatewayKeyError(f"{what}: {path} cannot be read ({exc.strerror})") from None
    if not text or any(c.isspace() for c in text):
        raise GatewayKeyError(f"{what}: {path} must hold one key without spaces")
    return text


def _new_key() -> str:
    return "sk-vllama-" + secrets.token_urlsafe(32) + "\n"


def client_key(entry: dict[str, str]) -> str:
    """A client key of the gateways: from its key_file, else the controller's generated copy
    (made on first use, 0600 in a 0700 folder)."""
    if entry.get("key_file"):
        return _read_key(entry["key_file"], f"client key {entry['name']}")
    path = Path(entry.get("copy") or gateway_key_path(entry["name"]))
    paths.create_secret(path, _new_key)
    return _read_key(str(path), f"client key {entry['name']}")


def tls_pem(plan: dict[str, Any]) -> str:
    """The listener's certificate chain and private key in one PEM (what HAProxy's ``crt``
    reads), from the controller's files; '' without TLS."""
    if not plan.get("tls_cert_file"):
        return ""
    parts = []
    for path in (plan["tls_cert_file"], plan["tls_key_file"]):
        try:
            parts.append(Path(path).read_text(encoding="utf-8").strip() + "\n")
        except OSError as exc:
            raise GatewayKeyError(f"{path} cannot be read ({exc.strerror})") from None
    return "".join(parts)


def key_maps(plan: dict[str, Any]) -> tuple[list[list[str]], dict[str, str]]:
    """What the gateway's two key maps hold: (SHA-256 of each client key, its name) and each
    instance's own key by upstream id."""
    clients = [[hashlib.sha256(client_key(k).encode()).hexdigest(), k["name"]]
               for k in plan["keys"]]
    upstreams = {u["id"]: _read_key(u["key_copy"], f"{u['host']}/{u['instance']}")
                 for u in plan["upstreams"]}
    return clients, upstreams


def rotate_client_key(name: str) -> None:
    """Replace a generated client key on the controller (0600); the gateways pick it up on
    their next apply."""
    path = Path(gateway_key_path(name))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(_new_key())
    tmp.replace(path)
