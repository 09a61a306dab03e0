"""Signing and verifying bundle manifests with an operator's ed25519 key (OpenSSH signatures).

``ssh-keygen -Y sign -n vllama-bundle`` signs ``manifest.json``; ``ssh-keygen -Y verify`` checks it
against the public key the operator names (``--bundle-key``), through a one-line allowed-signers
file. OpenSSH is on every controller, so no new Python dependency is needed. The namespace
``vllama-bundle`` keeps a bundle signature from being valid for anything else (and vice versa).

Without ``--sign-key`` the controller's own key is used, generated on first use under
``<state>/bundle-key/`` (private key 0600 in a 0700 folder).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vllama_provision import paths
from vllama_provision.errors import BundleError, BundleSignatureError, UsageError

NAMESPACE = "vllama-bundle"
PRINCIPAL = "vllama-bundle"
KEY_TYPE = "ssh-ed25519"


@dataclass(frozen=True)
class SigningKey:
    private: Path
    public: Path
    created: bool = False


def default_key_path() -> Path:
    return paths.state_dir() / "bundle-key" / "id_ed25519"


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if not found:
        raise UsageError("ssh-keygen (OpenSSH) is needed to sign and verify bundles; install "
                         "openssh-client")
    return found


def read_public_key(path: Path) -> str:
    """The 'ssh-ed25519 AAAA...' line of an OpenSSH public key file (refusing other types)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read the bundle key {path}: {exc.strerror}") from None
    words = text.split()
    if len(words) < 2 or words[0] != KEY_TYPE:
        raise UsageError(f"{path} is not an OpenSSH ed25519 public key (expected a line "
                         f"starting with '{KEY_TYPE} '; got {words[0] if words else 'nothing'!r})")
    return f"{words[0]} {words[1]}"


def ensure_key(sign_key: Path | None = None) -> SigningKey:
    """The key to sign with: ``sign_key`` (which must exist), else the controller's own key,
    generated on first use."""
    if sign_key is not None:
        if not sign_key.is_file():
            raise UsageError(f"the signing key {sign_key} does not exist")
        public = Path(str(sign_key) + ".pub")
        if not public.is_file():
            raise UsageError(f"the signing key's public half {public} does not exist (create it "
                             f"with `ssh-keygen -y -f {sign_key} > {public}`)")
        read_public_key(public)
        return SigningKey(sign_key, public)
    private = default_key_path()
    public = Path(str(private) + ".pub")
    if private.is_file() and public.is_file():
        return SigningKey(private, public)
    private.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(private.parent, 0o700)
    comment = f"vllama-bundle@{socket.gethostname()}"
    proc = subprocess.run([_ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", comment,
                           "-f", str(private)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BundleError(f"could not create a signing key at {private}: {proc.stderr.strip()}")
    os.chmod(private, 0o600)
    return SigningKey(private, public, created=True)


def sign(manifest: Path, key: SigningKey) -> Path:
    """Sign ``manifest`` with ``key``; returns the signature file (``manifest.sig``)."""
    signature = Path(str(manifest) + ".sig")
    signature.unlink(missing_ok=True)
    proc = subprocess.run([_ssh_keygen(), "-q", "-Y", "sign", "-f", str(key.private),
                           "-n", NAMESPACE, str(manifest)],
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not signature.is_file():
        raise BundleError(f"signing {manifest} with {key.private} failed: "
                          f"{(proc.stderr or proc.stdout).strip()}")
    return signature


def verify(manifest: Path, signature: Path, public_key: Path) -> None:
    """Raise BundleSignatureError unless ``signature`` is ``public_key``'s signature of
    ``manifest`` in the bundle namespace."""
    key_line = read_public_key(public_key)
    if not manifest.is_file():
        raise BundleSignatureError(f"{manifest} is missing: not a bundle")
    if not signature.is_file():
        raise BundleSignatureError(f"{signature} is missing: the bundle is not signed")
    with tempfile.TemporaryDirectory(prefix="vllama-verify-") as tmp:
        allowed = Path(tmp) / "allowed_signers"
        allowed.write_text(f'{PRINCIPAL} namespaces="{NAMESPACE}" {key_line}\n')
        with manifest.open("rb") as data:
            proc = subprocess.run([_ssh_keygen(), "-Y", "verify", "-f", str(allowed),
                                   "-I", PRINCIPAL, "-n", NAMESPACE, "-s", str(signature)],
                                  stdin=data, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BundleSignatureError(
            f"the bundle's signature does not verify with {public_key}: {manifest.name} was "
            f"changed after signing, or signed with another key "
            f"({detail[-1] if detail else 'ssh-keygen -Y verify failed'}); no host was "
            "contacted")
