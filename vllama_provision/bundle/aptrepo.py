"""OS packages for a bundle: resolved with this controller's apt, served to hosts as a signed
flat repository.

The packages hosts need come from the roles' own OS data (``vars/Debian.yml`` of vllama_base and
vllama: python3-venv, acl, libgomp1..., and docker.io for hosts with container instances).
Their dependencies are resolved as for an empty system (``apt-get -s`` against an empty dpkg
status), so the closure does not assume anything is installed; a host installs only what it
lacks. ``apt-get download`` fetches them through the
controller's configured mirrors into ``<cache>/bundle/apt/<os>-<arch>/`` (each file checked
against the sha256 apt's lists give), then they are written as a flat repository::

    Packages  Release  InRelease (clear-signed)  keyring.gpg  *.deb

The repository is signed with an OpenPGP key made for this bundle (``gpg``; its secret half is
deleted right after signing): apt verifies the packages with it through ``Signed-By``, and the
key and every file are covered by the manifest the operator's key signs.

Only targets this controller's apt can fetch are collected (the same OS release and
architecture); others are reported as not collected, never silently skipped.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from vllama_provision import paths
from vllama_provision.bundle.manifest import sha256_file
from vllama_provision.bundle.targets import DEB_ARCH, Target, controller_target
from vllama_provision.errors import BundleError

APT_ENV = {"LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    arch: str
    file_name: str
    sha256: str
    size: int


def role_packages(family: str = "Debian", containers: bool = False) -> list[str]:
    """The packages the roles install on a host of this OS family (vllama_base, then vllama;
    with ``containers``, also the Docker engine container instances need)."""
    found: list[str] = []
    wanted = [("vllama_base", "_vllama_base_packages"), ("vllama", "_vllama_packages")]
    if containers:
        wanted.append(("vllama", "_vllama_docker_packages"))
    for role, var in wanted:
        path = paths.roles_dir() / role / "vars" / f"{family}.yml"
        if path.is_file():
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            found += [p for p in data.get(var) or [] if p not in found]
    return found


def cannot_fetch(target: Target) -> str:
    """'' when this controller's apt can fetch packages for ``target``, else why not."""
    if target.family != "apt":
        return (f"{target.os} hosts do not use apt; their OS packages are not collected "
                "(install them from the site's own mirror)")
    here = controller_target()
    if here is None or here.os != target.os:
        where = here.os if here else "an OS this tool does not know"
        return (f"this controller runs {where}, its apt cannot fetch {target.os} packages; "
                f"bundle on a {target.os} machine")
    if DEB_ARCH.get(here.arch) != DEB_ARCH.get(target.arch):
        return (f"this controller's apt fetches {DEB_ARCH.get(here.arch)} packages, not "
                f"{DEB_ARCH.get(target.arch, target.arch)}; bundle on a machine of that "
                "architecture")
    if not shutil.which("apt-get"):
        return "apt-get is not installed on this controller"
    return ""


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **APT_ENV})
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise BundleError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def resolve(packages: list[str]) -> list[tuple[str, str, str]]:
    """(package, version, architecture) of ``packages`` and everything they depend on, as
    apt would install them on a system with nothing installed."""
    with tempfile.TemporaryDirectory(prefix="vllama-apt-") as tmp:
        status = Path(tmp) / "status"
        status.write_text("")
        out = _run(["apt-get", "-s", "-q", "-o", f"Dir::State::status={status}",
                    "-o", "Debug::NoLocking=1", "-o", "APT::Install-Recommends=false",
                    "install", *packages], "resolving " + " ".join(packages))
    found = []
    for line in out.splitlines():
        # Inst python3-venv (3.11.2-1+b1 Debian:12.13/stable [amd64])
        if line.startswith("Inst "):
            words = line.split()
            name = words[1]
            version = words[2].lstrip("(")
            arch = line.rsplit("[", 1)[-1].rstrip(")]") if "[" in line else ""
            found.append((name, version, arch))
    if not found:
        raise BundleError(f"apt resolved nothing for {' '.join(packages)}")
    return found


def _paragraphs(text: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            out.append(fields)
    return out


def records(resolved: list[tuple[str, str, str]]) -> list[Deb]:
    """What apt's lists say about each resolved package version (file name, sha256, size)."""
    specs = [f"{name}:{arch}={version}" if arch and arch != "all" else f"{name}={version}"
             for name, version, arch in resolved]
    out = _run(["apt-cache", "show", "--no-all-versions", *specs], "apt-cache show")
    debs: dict[tuple[str, str], Deb] = {}
    for fields in _paragraphs(out):
        if "Filename" not in fields or "SHA256" not in fields:
            continue
        key = (fields["Package"], fields["Version"])
        debs.setdefault(key, Deb(fields["Package"], fields["Version"], fields["Architecture"],
                                 Path(fields["Filename"]).name, fields["SHA256"],
                                 int(fields["Size"])))
    missing = [f"{n}={v}" for n, v, _a in resolved if (n, v) not in debs]
    if missing:
        raise BundleError(f"apt has no file records for {', '.join(missing)}")
    return [debs[(n, v)] for n, v, _a in resolved]


def cache_folder(target: Target) -> Path:
    return paths.cache_dir() / "bundle" / "apt" / target.apt_name


def fetch(debs: list[Deb], target: Target) -> tuple[dict[str, Path], list[str]]:
    """Every package file in the cache (downloading only those missing); returns the files
    by name, and the names that were downloaded now."""
    cache = cache_folder(target)
    cache.mkdir(parents=True, exist_ok=True)
    have = {d.file_name: cache / d.file_name for d in debs
            if (cache / d.file_name).is_file() and sha256_file(cache / d.file_name) == d.sha256}
    missing = [d for d in debs if d.file_name not in have]
    if missing:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
            specs = [f"{d.package}:{d.arch}={d.version}" if d.arch != "all"
                     else f"{d.package}={d.version}" for d in missing]
            _run(["apt-get", "download", "-q", "-o", "Debug::NoLocking=1", *specs],
                 "apt-get download", cwd=Path(tmp))
            by_hash = {sha256_file(p): p for p in Path(tmp).glob("*.deb")}
            for deb in missing:
                got = by_hash.get(deb.sha256)
                if got is None:
                    raise BundleError(f"apt-get download gave no file matching {deb.package} "
                                      f"{deb.version} (sha256 {deb.sha256})")
                got.replace(cache / deb.file_name)
                have[deb.file_name] = cache / deb.file_name
    return have, [d.file_name for d in missing]


def _control(deb: Path) -> str:
    proc = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise BundleError(f"{deb.name} is not a readable package: {proc.stderr.strip()}")
    return proc.stdout.rstrip("\n")


def write_repository(folder: Path, debs: list[Path], arch: str) -> list[str]:
    """Write Packages, Release, InRelease and keyring.gpg for the .deb files in ``folder``;
    returns the names of the files written."""
    paragraphs = []
    for deb in sorted(debs, key=lambda p: p.name):
        data = deb.read_bytes()
        paragraphs.append(
            _control(deb) + f"\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            f"MD5sum: {hashlib.md5(data, usedforsecurity=False).hexdigest()}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}")
    packages = ("\n\n".join(paragraphs) + "\n").encode()
    (folder / "Packages").write_bytes(packages)
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())
    release = (f"Origin: vllama-provision\nLabel: vllama-provision bundle\nSuite: bundle\n"
               f"Codename: bundle\nDate: {stamp}\nArchitectures: {arch} all\n"
               f"Description: OS packages of a vllama-provision bundle\nSHA256:\n"
               f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n")
    (folder / "Release").write_text(release)
    _sign_release(folder)
    return ["Packages", "Release", "InRelease", "keyring.gpg"]


def _sign_release(folder: Path) -> None:
    gpg = shutil.which("gpg")
    if not gpg:
        raise BundleError("gpg is needed to sign the bundle's package repository: "
                          "apt-get install gnupg")
    with tempfile.TemporaryDirectory(prefix="vllama-gpg-") as home:
        base = [gpg, "--homedir", home, "--batch", "--quiet", "--pinentry-mode", "loopback",
                "--passphrase", ""]
        uid = "vllama-provision bundle repository (made for one bundle)"
        _run([*base, "--quick-generate-key", uid, "ed25519", "sign", "never"],
             "creating the repository signing key")
        (folder / "InRelease").unlink(missing_ok=True)
        _run([*base, "--digest-algo", "SHA512", "--clearsign", "-o", str(folder / "InRelease"),
              str(folder / "Release")], "signing the repository")
        keyring = subprocess.run([*base, "--export", uid], capture_output=True, check=False)
        if keyring.returncode != 0 or not keyring.stdout:
            raise BundleError("exporting the repository key failed")
        (folder / "keyring.gpg").write_bytes(keyring.stdout)
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True,
                       check=False)
