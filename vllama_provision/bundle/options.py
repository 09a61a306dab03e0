"""The ``--bundle DIR`` / ``--bundle-key PUBFILE`` options of commands that change hosts.

Any command built on ``cli_common.apply_like`` takes a bundle in two lines::

    from vllama_provision.bundle.options import bundle_options, bundle_extravars

    @bundle_options
    def upgrade(..., bundle: Path | None, bundle_key: Path | None) -> None:
        apply_like(..., extravars={**other, **bundle_extravars(bundle, bundle_key, inventory,
                                                                limit)})

``bundle_extravars`` checks the manifest's signature on the controller first (exit 2, no host
contacted, when it does not verify) and returns the ``vllama_run_bundle`` extravar the role
installs from; ``{}`` without ``--bundle``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from vllama_provision.bundle import signing
from vllama_provision.bundle.manifest import MANIFEST, SIGNATURE, Manifest
from vllama_provision.errors import BundleError, UsageError

F = TypeVar("F", bound=Callable[..., Any])


def bundle_options(func: F) -> F:
    func = click.option(
        "--bundle-key", "bundle_key", type=click.Path(dir_okay=False, path_type=Path),
        metavar="PUBFILE",
        help="OpenSSH ed25519 public key the bundle must be signed with (default: the "
             "inventory's vllama_bundle_key, else this controller's own bundle key).")(func)
    return click.option(
        "--bundle", "bundle", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
        help="Install only from this bundle (see `vllama-provision bundle`): no package index, "
             "no Hugging Face; the signature is checked before any host is contacted.")(func)


def _inventory_key(inventory: Path, limit: str | None) -> Path | None:
    from vllama_provision.inventory import load_inventory

    keys = {str(h.vars["vllama_bundle_key"]) for h in load_inventory(inventory, limit)
            if h.vars.get("vllama_bundle_key")}
    if len(keys) > 1:
        raise UsageError("the hosts name different vllama_bundle_key files ("
                         + ", ".join(sorted(keys)) + "); one run checks one signature: set it "
                         "once for all hosts, or pass --bundle-key")
    return Path(keys.pop()) if keys else None


def public_key_for(bundle_key: Path | None, inventory: Path, limit: str | None) -> Path:
    chosen = bundle_key or _inventory_key(inventory, limit)
    if chosen is None:
        default = Path(str(signing.default_key_path()) + ".pub")
        if not default.is_file():
            raise UsageError("no key to check the bundle's signature with: pass --bundle-key "
                             "PUBFILE (the public key of whoever signed the bundle) or set "
                             "vllama_bundle_key in the inventory")
        chosen = default
    if not chosen.is_file():
        raise UsageError(f"the bundle key {chosen} does not exist")
    return chosen


def load_verified(bundle: Path, public_key: Path) -> Manifest:
    """The bundle's manifest after its signature verified with ``public_key``."""
    if not bundle.is_dir():
        raise UsageError(f"the bundle {bundle} is not a folder")
    signing.verify(bundle / MANIFEST, bundle / SIGNATURE, public_key)
    try:
        return Manifest.loads((bundle / MANIFEST).read_bytes())
    except BundleError as exc:
        raise UsageError(f"{bundle / MANIFEST}: {exc}") from None


def bundle_extravars(bundle: Path | None, bundle_key: Path | None, inventory: Path,
                     limit: str | None) -> dict[str, Any]:
    """``{"vllama_run_bundle": {...}}`` for a verified bundle, ``{}`` without one."""
    if bundle is None:
        if bundle_key is not None:
            raise UsageError("--bundle-key needs --bundle")
        return {}
    key = public_key_for(bundle_key, inventory, limit)
    manifest = load_verified(bundle, key)
    click.echo(f"bundle {bundle}: signature verified with {key} "
               f"({len(manifest.files)} files, id {manifest.bundle_id})", err=True)
    return {"vllama_run_bundle": {"dir": str(bundle.resolve()), "id": manifest.bundle_id,
                              "manifest": manifest.to_dict()}}
