"""Fleet-level rules: what is decidable from the whole inventory alone (no facts).

Per-host rules live in ``validation``; these read every host of the inventory at once, whatever
``--limit`` says, and matter only when the inventory has a gateway (group ``vllama_gateways``):
one front door makes the hosts' instances one service, so names, ports and addresses must fit
together. Called by ``inventory.load_inventory`` (the CLI, before any host is contacted) and by
the role's ``vllama_gateway_plan`` action plugin.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

from vllama_provision import schema
from vllama_provision.errors import Problem
from vllama_provision.validation import effective_port


class HostSpec(Protocol):
    """What these rules read of a host (``inventory.HostSpec``)."""

    name: str

    @property
    def instances(self) -> list[dict[str, Any]]: ...

    @property
    def ansible_host(self) -> str: ...

    @property
    def gateway(self) -> bool: ...

    @property
    def monitoring(self) -> bool: ...

    @property
    def groups(self) -> tuple[str, ...]: ...

    def var(self, name: str) -> Any: ...


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def default_bind(host: HostSpec) -> str:
    """Where a listener of this host binds by default: ansible_host when it is an IP literal,
    else every address."""
    try:
        ipaddress.ip_address(host.ansible_host)
    except ValueError:
        return "0.0.0.0"
    return host.ansible_host


# What makes two instances serve "the same model".
def _content(inst: dict[str, Any]) -> tuple[str, str, str]:
    return (str(inst["model"]), str(inst["model_file"]), str(inst["model_sha256"]))


def validate_fleet(fleet: Sequence[HostSpec], *, file: str = "") -> list[Problem]:
    """Fleet-level rules, decidable from the inventory alone (no facts): the gateway's and the
    monitoring's."""
    return _validate_gateways(fleet, file) + validate_monitoring(fleet, file=file)


def _ports_of(host: HostSpec) -> list[tuple[int, str, str]]:
    """(port, who, variable) of every listener the tool puts on ``host``'s address."""
    platform = host.var("vllama_platform")
    platform = platform if platform != "auto" else None
    found = [(port, f"the instance {inst['name']}", "port") for inst in host.instances
             if (port := effective_port(inst, platform))]
    if host.gateway:
        found.append((host.var("vllama_gateway_port"), "the gateway",
                      "vllama_gateway_port"))
        found.append((host.var("vllama_gateway_metrics_port"), "the gateway's metrics",
                      "vllama_gateway_metrics_port"))
    if host.monitoring:
        found.append((host.var("vllama_monitoring_port"), "Prometheus",
                      "vllama_monitoring_port"))
        if host.var("vllama_monitoring_alertmanager"):
            found.append((host.var("vllama_monitoring_alertmanager_port"), "Alertmanager",
                          "vllama_monitoring_alertmanager_port"))
    found.append((host.var("vllama_node_exporter_port"), "the node exporter",
                  "vllama_node_exporter_port"))
    return found


# Listeners a monitoring group adds (the others' collisions are the gateway's and the host's
# own rules).
_MONITORING_PORTS = ("vllama_gateway_metrics_port", "vllama_monitoring_port",
                     "vllama_monitoring_alertmanager_port", "vllama_node_exporter_port")


def validate_monitoring(fleet: Sequence[HostSpec], *, file: str = "") -> list[Problem]:
    """With a monitoring group, every host also runs a node exporter (and a gateway its metrics
    listener): no two listeners of one host may share a port."""
    if not any(h.monitoring for h in fleet):
        return []
    problems: list[Problem] = []
    for host in fleet:
        seen: dict[int, str] = {}
        for port, who, variable in _ports_of(host):
            if port in seen and variable in _MONITORING_PORTS:
                problems.append(Problem(
                    f"is also the port of {seen[port]} on this host", file=file,
                    host=host.name, variable=variable, value=port, has_value=True,
                    allowed="a port no other listener of this host uses"))
            seen.setdefault(port, who)
    return problems


def _validate_gateways(fleet: Sequence[HostSpec], file: str) -> list[Problem]:
    gateways = [h for h in fleet if h.gateway]
    if not gateways:
        return []
    problems: list[Problem] = []
    serving = [h for h in fleet if h.instances]
    if not serving:
        for host in gateways:
            problems.append(Problem(
                f"is in the group {schema.GATEWAY_GROUP} but no host of the inventory serves an "
                "instance", file=file, host=host.name, variable="vllama_instances",
                allowed="at least one host with vllama_instances"))
        return problems
    by_name: dict[str, list[tuple[HostSpec, dict[str, Any]]]] = defaultdict(list)
    for host in serving:
        for inst in host.instances:
            by_name[inst["served_name"] or inst["name"]].append((host, inst))
    for name, users in sorted(by_name.items()):
        tasks = {inst.get("task", "chat") for _, inst in users}
        if len(tasks) > 1:
            where = ", ".join(f"{h.name}/{i['name']} {i.get('task', 'chat')}" for h, i in users)
            problems.append(Problem(
                f"the served name {name!r} is a chat model on some hosts and an embedding "
                f"model on others ({where}): the gateway routes one name to one kind of model",
                file=file, host=users[0][0].name, instance=users[0][1]["name"],
                variable="task", allowed="one task per served name (serve the other under "
                                         "its own served_name)"))
            continue
        contents = {_content(inst) for _, inst in users}
        if len(contents) > 1 and not all(inst.get("mixed_content") for _, inst in users):
            where = ", ".join(f"{h.name}/{i['name']} {i['model']}"
                              + (f" ({i['model_file']})" if i["model_file"] else "")
                              for h, i in users)
            problems.append(Problem(
                f"the served name {name!r} is backed by different models ({where}): clients of "
                "the gateway would get different answers", file=file, host=users[0][0].name,
                instance=users[0][1]["name"], variable="served_name",
                allowed="the same model, model_file and model_sha256 for one name, or "
                        "mixed_content: true on every instance of that name"))
    for gw in gateways:
        gw_port = gw.var("vllama_gateway_port")
        platform = gw.var("vllama_platform")
        platform = platform if platform != "auto" else None
        for inst in gw.instances:
            if effective_port(inst, platform) == gw_port:
                problems.append(Problem(
                    f"is also the port of the instance {inst['name']} on this host",
                    file=file, host=gw.name, variable="vllama_gateway_port", value=gw_port,
                    has_value=True, allowed="a port no instance of this host uses"))
        for host in serving:
            if host.name == gw.name:
                continue
            for inst in host.instances:
                bind = inst["bind_address"] or default_bind(host)
                # Lab hosts share one machine's loopback network: a loopback address is
                # reachable from a gateway that is itself reached over loopback, and only then.
                if is_loopback(bind) and not (is_loopback(gw.ansible_host)
                                               and bind == host.ansible_host):
                    problems.append(Problem(
                        f"listens on {bind}, which the gateway on {gw.name} cannot reach",
                        file=file, host=host.name, instance=inst["name"],
                        variable="bind_address", value=bind, has_value=True,
                        allowed="an address the gateway hosts can reach (empty: ansible_host)"))
    return problems
