"""Reading an inventory strictly, then resolving each host's variables the way Ansible does.

Ansible only warns on a YAML syntax error and carries on with an empty inventory, so every YAML
file is parsed here first (duplicate keys refused too), and Ansible itself runs with
``ANSIBLE_INVENTORY_UNPARSED_FAILED=1``. A broken file is an error, never "nothing to do".
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vllama_provision import schema
from vllama_provision.errors import InventoryError, Problem, UsageError, suggest
from vllama_provision.fleet import validate_fleet
from vllama_provision.validation import near_miss_host_option, validate_host

_GROUP_KEYS = ("hosts", "vars", "children")
_CONNECTION_VARS = frozenset({"ansible_host", "ansible_port", "ansible_user", "ansible_connection",
                              "ansible_become", "ansible_python_interpreter"})


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (YAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_strict(path: Path) -> Any:
    """Parse one YAML file, turning every syntax problem into an InventoryError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InventoryError([Problem(f"cannot be read: {exc.strerror}", file=str(path))]) from None
    except UnicodeDecodeError:
        raise InventoryError([Problem("is not UTF-8 text", file=str(path))]) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        reason = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        message = f"is not valid YAML: {reason}" + (f" ({context})" if context else "")
        raise InventoryError([Problem(message, file=where)]) from None


@dataclass
class HostSpec:
    """One host as the inventory describes it, after Ansible's variable precedence."""

    name: str
    file: str
    vars: dict[str, Any]
    groups: tuple[str, ...] = ()

    @property
    def instances(self) -> list[dict[str, Any]]:
        """Instances with every unset option filled from the schema's defaults."""
        defaults = schema.instance_defaults()
        return [{**defaults, **inst} for inst in self.vars.get("vllama_instances") or []]

    def var(self, name: str) -> Any:
        if name in self.vars:
            return self.vars[name]
        if name in schema.GATEWAY_OPTION_NAMES:
            return schema.gateway_defaults().get(name)
        if name in schema.MONITORING_OPTION_NAMES or name.startswith("vllama_node_exporter_"):
            return schema.monitoring_defaults().get(name)
        return schema.host_defaults().get(name)

    @property
    def ansible_host(self) -> str:
        return str(self.vars.get("ansible_host") or self.name)

    @property
    def gateway(self) -> bool:
        """Whether the host runs the fleet's gateway (group vllama_gateways)."""
        return schema.GATEWAY_GROUP in self.groups

    @property
    def monitoring(self) -> bool:
        """Whether the host runs the fleet's Prometheus (group vllama_monitoring)."""
        return schema.MONITORING_GROUP in self.groups


@dataclass
class Inventory:
    """The hosts a command works on (``hosts``, after ``--limit``) and the whole fleet
    (``fleet``, every host of the file), which fleet-level plans such as the gateway's need
    whatever the limit says."""

    path: Path
    hosts: dict[str, HostSpec] = field(default_factory=dict)
    fleet: dict[str, HostSpec] = field(default_factory=dict)

    def __iter__(self) -> Iterator[HostSpec]:
        return iter(self.hosts.values())


def to_plain(value: Any) -> Any:
    """Ansible 2.19 returns tagged subclasses of str/int/list/dict; hand back plain types."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def host_vars_from_task(task_vars: Mapping[str, Any], template: Any) -> dict[str, Any]:
    """A host's vllama_* variables (and ansible_host) as a role's action plugin sees them,
    templated and plain, for the same validator and planner the CLI uses."""
    names = [k for k in task_vars if str(k).startswith("vllama_")]
    names += [k for k in ("ansible_host",) if k in task_vars]
    return {k: to_plain(template(task_vars[k])) for k in names}


def fleet_from_hostvars(hostvars: Mapping[str, Any], groups: Mapping[str, Any]
                        ) -> list[HostSpec]:
    """Every host of the inventory as an action plugin sees it (``hostvars`` and ``groups``,
    which hold every host whatever the run's limit): the fleet the gateway is planned from."""
    members: dict[str, list[str]] = {}
    for group, names in groups.items():
        if group in ("all", "ungrouped"):
            continue
        for name in names or []:
            members.setdefault(str(name), []).append(str(group))
    fleet = []
    for name in groups.get("all") or []:
        host = hostvars[name]
        keys = [k for k in host if str(k).startswith("vllama_") or k == "ansible_host"]
        fleet.append(HostSpec(name=str(name), file="inventory",
                              vars={str(k): to_plain(host[k]) for k in keys},
                              groups=tuple(sorted(members.get(str(name), [])))))
    return fleet


def _check_structure(path: Path, data: Any) -> list[Problem]:
    """Check the YAML inventory layout (groups with hosts/vars/children) before Ansible does."""
    file = str(path)
    if not isinstance(data, Mapping) or not data:
        return [Problem("must be a YAML mapping of groups (for example all: {hosts: ...})",
                        file=file)]
    problems: list[Problem] = []

    def walk(group: str, body: Any) -> None:
        if body is None:
            return
        if not isinstance(body, Mapping):
            problems.append(Problem(f"group {group} must be a mapping of hosts/vars/children",
                                    file=file, value=body, has_value=True))
            return
        for key, value in body.items():
            if key not in _GROUP_KEYS:
                problems.append(Problem(f"group {group} has an unknown key", file=file,
                                        variable=str(key), allowed=", ".join(_GROUP_KEYS),
                                        suggestion=suggest(str(key), _GROUP_KEYS)))
                continue
            if value is None:
                continue
            if not isinstance(value, Mapping):
                problems.append(Problem(f"group {group}: '{key}' must be a mapping, not a "
                                        f"{type(value).__name__}", file=file, variable=str(key)))
                continue
            if key == "children":
                for child, child_body in value.items():
                    walk(str(child), child_body)
            if key == "hosts":
                for host, host_vars in value.items():
                    if host_vars is not None and not isinstance(host_vars, Mapping):
                        problems.append(Problem("host variables must be a mapping", file=file,
                                                host=str(host), value=host_vars,
                                                has_value=True))

    for group, body in data.items():
        walk(str(group), body)
    return problems


def _vars_files(inventory_path: Path) -> list[Path]:
    base = inventory_path.parent
    found: list[Path] = []
    for folder in ("group_vars", "host_vars"):
        root = base / folder
        if root.is_dir():
            found += sorted(p for p in root.rglob("*") if p.suffix in (".yml", ".yaml", "")
                            and p.is_file())
    return found


def load_inventory(path: str | Path, limit: str | None = None,
                   validate: bool = True) -> Inventory:
    """Load, resolve and validate an inventory. Raises InventoryError listing every problem."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such inventory file")
    if path.is_dir() or path.suffix not in (".yml", ".yaml"):
        raise UsageError(f"{path}: inventories are YAML files ending in .yml or .yaml")
    data = load_yaml_strict(path)
    problems = _check_structure(path, data)
    for extra in _vars_files(path):
        try:
            load_yaml_strict(extra)
        except InventoryError as exc:
            problems += exc.problems
    if problems:
        raise InventoryError(problems)

    hosts, fleet = _resolve_hosts(path, limit)
    inventory = Inventory(path=path, hosts=hosts, fleet=fleet)
    if validate:
        problems = []
        for host in inventory:
            problems += validate_host(host.name, host.vars, file=str(path), groups=host.groups)
        if not problems:
            # Fleet-level rules (the gateway's) read every host, whatever --limit says.
            problems += validate_fleet(list(fleet.values()), file=str(path))
        if problems:
            raise InventoryError(problems)
    return inventory


def _resolve_hosts(path: Path, limit: str | None
                   ) -> tuple[dict[str, HostSpec], dict[str, HostSpec]]:
    """The hosts --limit selects and every host of the inventory, variables resolved."""
    # Before Ansible's constants are first read: an unparsable source is an error, not "empty".
    os.environ.setdefault("ANSIBLE_INVENTORY_UNPARSED_FAILED", "1")
    # Ansible prints its own warnings on stderr; keep them out of the tool's output.
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        from ansible.errors import AnsibleError
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.template import Templar
        from ansible.vars.manager import VariableManager

        loader = DataLoader()
        try:
            manager = InventoryManager(loader=loader, sources=[str(path)])
        except AnsibleError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "cannot be parsed"
            raise InventoryError([Problem(f"Ansible cannot read it: {first}",
                                          file=str(path))]) from None
        everyone = manager.get_hosts()
        all_names = [h.name for h in everyone]
        if limit:
            manager.subset(limit)
        selected = manager.get_hosts()
        selected_names = {h.name for h in selected}
        if limit and not selected:
            raise UsageError(f"--limit {limit} matches no host in {path}; hosts: "
                             f"{', '.join(all_names) or '(none)'}")
        variables = VariableManager(loader=loader, inventory=manager)
        hosts: dict[str, HostSpec] = {}
        problems: list[Problem] = []
        for host in everyone:
            raw = variables.get_vars(host=host, include_hostvars=False)
            templar = Templar(loader=loader, variables=raw)
            resolved: dict[str, Any] = {}
            for key in list(raw):
                if not (key.startswith("vllama_") or key in _CONNECTION_VARS
                        or near_miss_host_option(key)):
                    continue
                try:
                    resolved[key] = to_plain(templar.template(raw[key]))
                except AnsibleError as exc:
                    if host.name not in selected_names:
                        continue  # outside --limit: fleet rules see the variable as unset
                    problems.append(Problem(f"cannot be templated: {str(exc).splitlines()[0]}",
                                            file=str(path), host=host.name, variable=key))
            groups = tuple(sorted(g.name for g in host.get_groups()
                                  if g.name not in ("all", "ungrouped")))
            hosts[host.name] = HostSpec(name=host.name, file=str(path), vars=resolved,
                                        groups=groups)
        watchers = manager.groups.get(schema.MONITORING_GROUP)
        if watchers is not None and not watchers.get_hosts():
            problems.append(Problem(f"the group {schema.MONITORING_GROUP} has no host: nothing "
                                    "would scrape the fleet", file=str(path),
                                    variable=schema.MONITORING_GROUP,
                                    allowed="at least one host in the group, or no such group"))
        if problems:
            raise InventoryError(problems)
    return {n: h for n, h in hosts.items() if n in selected_names}, hosts


def fleet_for_plugin(task_vars: Mapping[str, Any]
                     ) -> tuple[list[HostSpec], HostSpec | None, list[str]]:
    """For the fleet-level action plugins (gateway, monitoring): every host of the inventory as
    the run sees it, this task's host among them (None when it is not), and the problems of
    that host's variables and of the fleet's rules, rendered (empty when valid)."""
    fleet = fleet_from_hostvars(task_vars.get("hostvars") or {}, task_vars.get("groups") or {})
    host = task_vars.get("inventory_hostname", "")
    me = next((h for h in fleet if h.name == host), None)
    if me is None:
        return fleet, None, []
    problems = validate_host(host, me.vars, file="inventory", groups=me.groups)
    problems += validate_fleet(fleet, file="inventory")
    return fleet, me, [p.render() for p in problems]
