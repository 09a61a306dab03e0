"""The fleet's monitoring, planned from the whole inventory: what Prometheus scrapes and which
alerts it evaluates.

Hosts of the inventory group ``vllama_monitoring`` run Prometheus (and, unless told otherwise,
Alertmanager) from the OS packages. What they scrape is a function of the whole fleet, whatever
``--limit`` says, planned here once for ``plan``, ``render`` and the role alike:

* ``node``: the node exporter of every Linux host (the models root's filesystem, memory, CPU,
  the ``vllama-*`` units through its systemd collector, and the release metrics the role writes
  as text files: which release each instance serves, whether a switch is unfinished);
* ``vllama_gateway``: each gateway's HAProxy exporter (per-model request rates, response codes,
  queue and response times; the only metrics llama-cpp-python instances have);
* ``vllm``: vLLM's ``/metrics`` (open in the pinned vLLM, no key);
* ``llama_server``: llama-server's ``--metrics`` (behind the instance's key, which Prometheus
  reads from a credentials file, never from its configuration's text);
* ``dcgm``: NVIDIA's DCGM exporter on NVIDIA hosts (rendered; no GPU runs it here).

The alert rules ship with the tool (``templates/prometheus/vllama-rules.yml.j2``); their
thresholds and ``for:`` windows are monitoring-host variables.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vllama_provision import facts as fact_cache
from vllama_provision import gpu, paths, planner
from vllama_provision.fleet import default_bind
from vllama_provision.inventory import HostSpec
from vllama_provision.planner import Check, plan_host

CONFIG_DIR = "/etc/prometheus"
CREDENTIALS_DIR = "/etc/prometheus/vllama-credentials"
# Where the role writes the release metrics the node exporter's textfile collector reads.
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
DCGM_EXPORTER_PORT = 9400
# NVIDIA's image, its DCGM paired with the exporter by the tag (rendered only: see below).
DCGM_EXPORTER_IMAGE = "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.5-3.4.1-ubuntu22.04"
# The node exporter's default list of file systems it leaves out (1.5), without overlay: a
# models root on an overlay root file system (containers, the lab's hosts) must be watched;
# Docker's own overlay mounts stay out by the default mount-point exclusion.
FS_TYPES_EXCLUDE = ("^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|"
                    "hugetlbfs|iso9660|mqueue|nsfs|proc|procfs|pstore|rpc_pipefs|securityfs|"
                    "selinuxfs|squashfs|sysfs|tracefs)$")
USER = "vllama"  # Prometheus' basic-auth user

FactsFor = Callable[[HostSpec], gpu.HostFacts | None]


@dataclass
class Target:
    """One scraped endpoint."""

    address: str  # HOST:PORT
    host: str
    instance: str = ""
    model: str = ""
    credentials: str = ""  # llama_server: the key file on the monitoring host
    key_copy: str = ""     # ... and the controller's copy it is written from


@dataclass
class Job:
    name: str
    targets: list[Target] = field(default_factory=list)
    metrics_path: str = "/metrics"


@dataclass
class MonitoringPlan:
    host: str
    bind_address: str
    port: int
    endpoint: str
    alertmanager: bool
    alertmanager_port: int
    alertmanagers: list[str]
    settings: dict[str, Any]
    thresholds: dict[str, Any]
    jobs: list[Job]
    paths: dict[str, str]
    files: list[dict[str, str]]
    password_file: str
    checks: list[Check] = field(default_factory=list)
    # Controller-side certificate and key of the web UI and API ("" each: plain http).
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tls": self.tls}


def _address(host: HostSpec, bind: str, port: int) -> str:
    return _hostport(host.ansible_host if bind in ("", "0.0.0.0", "::") else bind, port)


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# The node exporter's rendered file (its command line), on every Linux host of a monitored fleet.
EXPORTER_FILES = [{"template": "prometheus/node-exporter.defaults.j2",
                   "dest": "/etc/default/prometheus-node-exporter", "mode": "0644",
                   "validator": ""}]


def exporter_address(host: HostSpec) -> str:
    """HOST:PORT the host's node exporter listens on (and is scraped at)."""
    bind = host.var("vllama_node_exporter_bind_address") or default_bind(host)
    return _address(host, bind, host.var("vllama_node_exporter_port"))


def exporter_plan(host: HostSpec) -> dict[str, Any]:
    """What the node exporter role needs on ``host``: where it listens, which units its systemd
    collector reports, where the role's text-file metrics go."""
    bind = host.var("vllama_node_exporter_bind_address") or default_bind(host)
    return {"listen": _hostport(bind, host.var("vllama_node_exporter_port")),
            "address": exporter_address(host), "textfile_dir": TEXTFILE_DIR,
            "units": "vllama-.+[.]service",
            "models_root": host.var("vllama_models_root") or planner.LINUX_MODELS_ROOT,
            "fs_types_exclude": FS_TYPES_EXCLUDE, "files": EXPORTER_FILES}


# NVIDIA's DCGM exporter on NVIDIA hosts of a monitored fleet: rendered and linted only (no
# GPU runs it here, so apply does not install it; the README says how to).
DCGM_FILES = [{"template": "systemd/vllama-dcgm-exporter.service.j2",
               "dest": "/etc/systemd/system/vllama-dcgm-exporter.service", "mode": "0644",
               "validator": "systemd-docker"}]


def dcgm_plan(host: HostSpec) -> dict[str, Any]:
    """Where the host's DCGM exporter publishes its port (the address Prometheus scrapes)."""
    bind = default_bind(host)
    # docker run --publish ADDRESS:HOST_PORT:CONTAINER_PORT (the exporter listens on 9400).
    return {"publish": f"{_hostport(bind, DCGM_EXPORTER_PORT)}:9400",
            "address": _address(host, bind, DCGM_EXPORTER_PORT),
            "image": DCGM_EXPORTER_IMAGE, "files": DCGM_FILES}


def monitoring_paths() -> dict[str, str]:
    return {"config": f"{CONFIG_DIR}/prometheus.yml", "rules": f"{CONFIG_DIR}/vllama-rules.yml",
            "web_config": f"{CONFIG_DIR}/vllama-web.yml",
            "alertmanager_config": f"{CONFIG_DIR}/alertmanager.yml",
            "defaults": "/etc/default/prometheus",
            "alertmanager_defaults": "/etc/default/prometheus-alertmanager",
            "dropin": "/etc/systemd/system/prometheus.service.d/vllama.conf",
            "credentials_dir": CREDENTIALS_DIR, "password": f"{CREDENTIALS_DIR}/prometheus",
            "tls_cert": f"{CREDENTIALS_DIR}/tls.crt", "tls_key": f"{CREDENTIALS_DIR}/tls.key",
            "data_dir": "/var/lib/prometheus/metrics2", "textfile_dir": TEXTFILE_DIR}


def monitoring_files(p: dict[str, str], alertmanager: bool) -> list[dict[str, str]]:
    """Rendered files of a monitoring host (the configuration last: its check reads the
    others)."""
    files = [
        {"template": "prometheus/vllama-rules.yml.j2", "dest": p["rules"], "mode": "0644",
         "validator": "promtool-rules"},
        {"template": "prometheus/vllama-web.yml.j2", "dest": p["web_config"], "mode": "0640",
         "validator": "promtool-web"},
        {"template": "prometheus/prometheus.defaults.j2", "dest": p["defaults"], "mode": "0644",
         "validator": ""},
        {"template": "systemd/prometheus-vllama.conf.j2", "dest": p["dropin"], "mode": "0644",
         "validator": "systemd-dropin"},
    ]
    if alertmanager:
        files += [{"template": "prometheus/alertmanager.yml.j2",
                   # Checked on the host by amtool (the role), before Alertmanager reads it.
                   "dest": p["alertmanager_config"], "mode": "0644", "validator": ""},
                  {"template": "prometheus/alertmanager.defaults.j2",
                   "dest": p["alertmanager_defaults"], "mode": "0644", "validator": ""}]
    files.append({"template": "prometheus/prometheus.yml.j2", "dest": p["config"],
                  "mode": "0644", "validator": "promtool-config"})
    return files


def plan_jobs(fleet: Sequence[HostSpec], facts_for: FactsFor) -> tuple[list[Job], list[Check]]:
    """Every scrape target of the fleet, by job."""
    jobs = {name: Job(name) for name in ("node", "vllama_gateway", "vllm", "llama_server",
                                         "dcgm")}
    checks: list[Check] = []
    for host in sorted(fleet, key=lambda h: h.name):
        plan = plan_host(host, facts_for(host))
        if plan.platform is None and host.instances:
            checks.append(Check("not-evaluated", "monitoring",
                                f"{host.name}: its engines are left out, its platform is "
                                "unknown (set vllama_platform or run `vllama-provision facts "
                                "INVENTORY --save`)"))
        if plan.platform != "macos-arm64":
            jobs["node"].targets.append(Target(exporter_address(host), host.name))
        if host.gateway:
            bind = host.var("vllama_gateway_bind_address") or default_bind(host)
            jobs["vllama_gateway"].targets.append(Target(
                _address(host, bind, host.var("vllama_gateway_metrics_port")), host.name))
        if plan.platform == "linux-nvidia":
            jobs["dcgm"].targets.append(Target(dcgm_plan(host)["address"], host.name))
        for inst in plan.instances:
            address = _address(host, inst.bind_address, inst.port)
            if inst.server == "vllm":
                jobs["vllm"].targets.append(Target(address, host.name, inst.name,
                                                   inst.served_name))
            elif inst.server == "llama-server":
                digest = hashlib.sha256(f"{host.name}.{inst.name}".encode()).hexdigest()[:16]
                jobs["llama_server"].targets.append(Target(
                    address, host.name, inst.name, inst.served_name,
                    credentials=f"{CREDENTIALS_DIR}/{digest}.key",
                    key_copy=inst.api_key_file or str(paths.key_path(host.name, inst.name))))
    return [job for job in jobs.values() if job.targets], checks


def password_path(host: str) -> str:
    """The controller's private copy of a monitoring host's generated password."""
    return str(paths.keys_dir() / "_monitoring" / f"{host}.password")


def plan_monitoring(host: HostSpec, jobs: list[Job], checks: Sequence[Check] = ()
                    ) -> MonitoringPlan:
    bind = host.var("vllama_monitoring_bind_address") or default_bind(host)
    port = int(host.var("vllama_monitoring_port"))
    alertmanager = bool(host.var("vllama_monitoring_alertmanager"))
    cert = str(host.var("vllama_monitoring_tls_cert_file") or "")
    endpoint = f"{'https' if cert else 'http'}://{_address(host, bind, port)}"
    p = monitoring_paths()
    names = ("retention_time", "retention_size", "scrape_interval", "evaluation_interval")
    thresholds = ("down_for", "error_ratio", "error_for", "disk_free_ratio",
                  "gpu_temperature_c", "gpu_memory_ratio", "switch_for")
    return MonitoringPlan(
        host=host.name, bind_address=bind, port=port, endpoint=endpoint,
        alertmanager=alertmanager,
        alertmanager_port=int(host.var("vllama_monitoring_alertmanager_port")),
        alertmanagers=list(host.var("vllama_monitoring_alertmanagers") or []),
        settings={n: host.var(f"vllama_monitoring_{n}") for n in names},
        thresholds={n: host.var(f"vllama_monitoring_{n}") for n in thresholds},
        jobs=jobs, paths=p, files=monitoring_files(p, alertmanager),
        password_file=str(host.var("vllama_monitoring_password_file") or
                          password_path(host.name)),
        checks=list(checks), tls_cert_file=cert,
        tls_key_file=str(host.var("vllama_monitoring_tls_key_file") or ""))


def plan_fleet_monitoring(fleet: Sequence[HostSpec], facts_for: FactsFor
                          ) -> dict[str, MonitoringPlan]:
    """The monitoring plan of every monitoring host of the fleet."""
    if not any(h.monitoring for h in fleet):
        return {}
    jobs, checks = plan_jobs(fleet, facts_for)
    return {h.name: plan_monitoring(h, jobs, checks) for h in fleet if h.monitoring}


def plan_inventory_monitoring(inventory: Any) -> dict[str, MonitoringPlan]:
    """The monitoring hosts of a loaded inventory, as the CLI plans them (the whole fleet,
    with the controller's cached facts)."""
    return plan_fleet_monitoring(list(inventory.fleet.values()),
                                 lambda host: fact_cache.load(inventory.path, host.name))


def plan_inventory_exporters(inventory: Any) -> dict[str, dict[str, Any]]:
    """The node exporter of every Linux host the command works on, when the inventory has a
    monitoring group (HOST -> exporter_plan)."""
    fleet = list(inventory.fleet.values())
    if not any(h.monitoring for h in fleet):
        return {}
    return {h.name: exporter_plan(h) for h in inventory
            if plan_host(h, fact_cache.load(inventory.path, h.name)).platform != "macos-arm64"}


def plan_inventory_dcgm(inventory: Any) -> dict[str, dict[str, Any]]:
    """The DCGM exporter of every NVIDIA host the command works on, when the inventory has a
    monitoring group (HOST -> dcgm_plan)."""
    if not any(h.monitoring for h in inventory.fleet.values()):
        return {}
    return {h.name: dcgm_plan(h) for h in inventory
            if plan_host(h, fact_cache.load(inventory.path, h.name)).platform == "linux-nvidia"}


def template_vars(plan: MonitoringPlan, managed: str, password_hash: str = "") -> dict[str, Any]:
    """What the monitoring templates see, on the host and in ``render`` alike."""
    return {"_vllama_monitoring": plan.to_dict(), "_vllama_monitoring_password_hash":
            password_hash, "ansible_managed": managed}


class MonitoringSecretError(ValueError):
    """The monitoring password cannot be read (the message never holds it)."""


def password(plan: MonitoringPlan | dict[str, Any]) -> str:
    """The basic-auth password of Prometheus: its password file, else the controller's
    generated copy (made on first use, 0600 in a 0700 folder)."""
    path = Path(plan.password_file if isinstance(plan, MonitoringPlan) else
                plan["password_file"])
    if str(path).startswith(str(paths.keys_dir())):  # generated, not the inventory's file
        paths.create_secret(path, lambda: secrets.token_urlsafe(24) + "\n")
    return _read_secret(str(path), "vllama_monitoring_password_file")


def password_hash(plan: MonitoringPlan | dict[str, Any]) -> str:
    """The bcrypt hash of the password that Prometheus' web configuration holds. Stable: kept
    beside the controller's copy and made again only when the password changed, so a
    converged run renders the same bytes."""
    import bcrypt

    secret = password(plan).encode()
    name = plan.host if isinstance(plan, MonitoringPlan) else plan["host"]
    cache = Path(password_path(name)).with_suffix(".bcrypt")
    try:
        known = cache.read_text(encoding="utf-8").strip()
        if known and bcrypt.checkpw(secret, known.encode()):
            return known
    except (OSError, ValueError):
        pass
    made = bcrypt.hashpw(secret, bcrypt.gensalt(rounds=10)).decode()
    cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(cache, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(made + "\n")
    return made


def _read_secret(path: str, what: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise MonitoringSecretError(f"{what}: {path} cannot be read ({exc.strerror})") from None
    if not text or any(c.isspace() for c in text):
        raise MonitoringSecretError(f"{what}: {path} must hold one secret without spaces")
    return text


def _read_pem(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip() + "\n"
    except OSError as exc:
        raise MonitoringSecretError(f"{path} cannot be read ({exc.strerror})") from None


def trust(plan: MonitoringPlan) -> Any:
    """What a client checks Prometheus' certificate against: the system's CAs and the
    inventory's certificate (it may be self-signed); True (the system's) without TLS."""
    if not plan.tls:
        return True
    import ssl

    context = ssl.create_default_context()
    context.load_verify_locations(plan.tls_cert_file)
    return context


def secret_files(plan: dict[str, Any]) -> dict[str, str]:
    """The monitoring host's secret files by path: Prometheus' password (for its own scrape)
    and the key of each llama-server it scrapes, from the controller's copies."""
    files = {plan["paths"]["password"]: password(plan)}
    if plan.get("tls_cert_file"):
        files[plan["paths"]["tls_cert"]] = _read_pem(plan["tls_cert_file"])
        files[plan["paths"]["tls_key"]] = _read_pem(plan["tls_key_file"])
    for job in plan["jobs"]:
        for target in job["targets"]:
            if target.get("credentials"):
                files[target["credentials"]] = _read_secret(
                    target["key_copy"], f"{target['host']}/{target['instance']}")
    return files
