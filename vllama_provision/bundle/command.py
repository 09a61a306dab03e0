"""The ``vllama-provision bundle`` command (loaded only when it is used)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vllama_provision.cli_common import inventory_argument, json_option, limit_option
from vllama_provision.errors import EXIT_HOST_FAILED, EXIT_OK


@click.command("bundle")
@inventory_argument
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Bundle folder (created; an earlier bundle there is updated in place).")
@limit_option
@json_option
@click.option("--sign-key", "sign_key", type=click.Path(dir_okay=False, path_type=Path),
              metavar="KEYFILE",
              help="OpenSSH ed25519 private key to sign the manifest with (its public half "
                   "KEYFILE.pub must exist). Default: this controller's bundle key, created on "
                   "first use under the state folder.")
@click.option("--engine", "engine", type=click.Choice(["llamacpp", "vllm"]),
              help="With --version: bundle this engine at another version, for `upgrade "
                   "--engine E --version V --bundle DIR`.")
@click.option("--version", "version", help="The engine version for --engine.")
@click.option("--refresh", is_flag=True,
              help="Resolve everything again (new dependency releases, package updates) "
                   "instead of reusing the items of the earlier bundle in --out.")
def bundle(inventory: Path, out: Path, limit: str | None, json_out: str | None,
           sign_key: Path | None, engine: str | None, version: str | None,
           refresh: bool) -> None:
    """Collect everything the inventory's hosts need into a signed offline bundle.

    Contacts no host: each host's OS, architecture and Python come from vllama_os,
    vllama_arch and vllama_python in the inventory, or from the facts cache (`facts --save`).
    Collects the engine wheels with every dependency (pinned by sha256), the OS packages hosts
    may lack as a signed package repository (with the Docker engine for hosts with container
    instances), the model files and folders (Hugging Face snapshots whole), and container
    images (an instance's image_archive, else `docker save` with a Docker engine here). What
    cannot be collected from this machine is listed as "not collected" and the exit code is 1.
    Install with `apply INVENTORY --bundle DIR --bundle-key PUBFILE`.
    """
    from vllama_provision.bundle.collect import build, write_report
    from vllama_provision.errors import UsageError
    from vllama_provision.planner import EngineOverride

    if bool(engine) != bool(version):
        raise UsageError("--engine and --version go together (for example --engine llamacpp "
                         "--version 0.3.36)")
    override = EngineOverride(engine, version) if engine and version else None

    to_stderr = json_out == "-"

    def echo(text: str) -> None:
        click.echo(text, err=to_stderr)

    echo(f"bundle: {inventory} -> {out}")
    result = build(inventory, out, limit=limit, sign_key=sign_key, refresh=refresh,
                   override=override, echo=echo)
    if result.key_created:
        echo(click.style(f"created a bundle signing key; its public half is {result.public_key}"
                         " (give it to the sites that apply this bundle)", fg="yellow"))
    for missing in result.manifest.not_collected:
        echo(click.style(f"not collected: {missing['what']} (for {missing['hosts']}): "
                         f"{missing['why']}", fg="red"))
    echo(f"bundle {result.manifest.bundle_id}: {len(result.manifest.files)} files, "
         f"{result.size / 2**20:.1f} MiB ({result.copied} copied now) in "
         f"{result.seconds:.1f}s; signed with {result.public_key}")
    echo(f"apply it with: vllama-provision apply {inventory} --bundle {out} --bundle-key "
         f"{result.public_key}")
    if json_out:
        write_report(result, json_out)
    sys.exit(EXIT_OK if result.complete else EXIT_HOST_FAILED)
