"""The golden root filesystem every lab host boots from, built once per recipe and cached.

``cache_dir()/golden/<suite>-<recipehash>/rootfs`` is a debootstrap minbase tree. The recipe hash
covers the suite, the package list, the apt mirrors, the controller's extra CA certificates and
:data:`RECIPE_VERSION`; when any of them changes a new entry is built. Builds happen in a temporary
folder that is renamed into place, under a file lock so concurrent builders wait for each other.
Nothing per host (SSH keys, host keys, machine-id, hostname) is in the image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vllama_provision import paths
from vllama_provision.errors import LabError, UsageError
from vllama_provision.lab.system import file_lock, require_lab_machine, run
from vllama_provision.longrun import last_line, run_logged

RECIPE_VERSION = 1
SUITES = ("bookworm", "trixie")
DEFAULT_SUITE = "bookworm"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-apt",
    "python3-debian", "python3-venv", "gnupg", "sudo", "iproute2", "ca-certificates", "procps",
    "curl", "libpam-systemd",
)
COMPONENTS = "main contrib non-free non-free-firmware"
CA_DIR = Path("/usr/local/share/ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY = "http://deb.debian.org/debian-security"
APT_TIMERS = ("apt-daily.timer", "apt-daily-upgrade.timer")


@dataclass(frozen=True)
class Mirrors:
    archive: str
    security: str


@dataclass(frozen=True)
class Recipe:
    suite: str
    packages: tuple[str, ...]
    mirrors: Mirrors
    ca_certs: tuple[tuple[str, str], ...]  # (file name, sha256 of its content)
    version: int = RECIPE_VERSION

    @property
    def digest(self) -> str:
        blob = json.dumps({"version": self.version, "suite": self.suite,
                           "packages": sorted(self.packages),
                           "mirrors": [self.mirrors.archive, self.mirrors.security],
                           "ca_certs": [list(c) for c in self.ca_certs]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def key(self) -> str:
        return f"{self.suite}-{self.digest}"


def _deb822_entries(text: str) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields:
            entries.append(fields)
    return entries


def machine_mirrors(etc_apt: Path = Path("/etc/apt")) -> Mirrors:
    """The Debian archive and security mirrors this machine's own apt sources use."""
    archive = security = ""
    pairs: list[tuple[str, str]] = []  # (uri, suite)
    sources_d = etc_apt / "sources.list.d"
    for path in sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []:
        for entry in _deb822_entries(path.read_text(encoding="utf-8", errors="replace")):
            if entry.get("enabled", "yes").lower() == "no" or "deb" not in entry.get("types", ""):
                continue
            for uri in entry.get("uris", "").split():
                pairs += [(uri, suite) for suite in entry.get("suites", "").split()]
    for path in [etc_apt / "sources.list", *sorted(sources_d.glob("*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                pairs.append((words[1], words[2]))
    for uri, suite in pairs:
        if suite.endswith("-security") and not security:
            security = uri
        elif "-" not in suite and "security" not in uri and not archive:
            archive = uri
    return Mirrors(archive=(archive or DEFAULT_MIRROR).rstrip("/"),
                   security=(security or DEFAULT_SECURITY).rstrip("/"))


def extra_ca_certs() -> list[Path]:
    return sorted(CA_DIR.glob("*.crt")) if CA_DIR.is_dir() else []


def recipe(suite: str = DEFAULT_SUITE) -> Recipe:
    if suite not in SUITES:
        raise UsageError(f"suite {suite!r} is not supported; choose one of {', '.join(SUITES)}")
    certs = tuple((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in extra_ca_certs())
    return Recipe(suite=suite, packages=PACKAGES, mirrors=machine_mirrors(), ca_certs=certs)


def golden_root() -> Path:
    return paths.cache_dir() / "golden"


def image_dir(rec: Recipe) -> Path:
    return golden_root() / rec.key


def rootfs(rec: Recipe) -> Path:
    return image_dir(rec) / "rootfs"


def sources_text(rec: Recipe) -> str:
    s = rec.suite
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    return (f"Types: deb\nURIs: {rec.mirrors.archive}\nSuites: {s} {s}-updates\n"
            f"Components: {COMPONENTS}\nSigned-By: {keyring}\n"
            f"\nTypes: deb\nURIs: {rec.mirrors.security}\nSuites: {s}-security\n"
            f"Components: {COMPONENTS}\nSigned-By: {keyring}\n")


def _configure(root: Path, rec: Recipe, log: Path) -> None:
    """Everything after debootstrap: apt sources, CA certificates, no identity, quiet timers."""
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(sources_text(rec))
    ca_target = root / CA_DIR.relative_to("/")
    ca_target.mkdir(parents=True, exist_ok=True)
    for cert in extra_ca_certs():
        shutil.copyfile(cert, ca_target / cert.name)
    chroot_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
                  "LC_ALL": "C"}
    run(["chroot", root, "update-ca-certificates"], what="update-ca-certificates in the image",
        env=chroot_env)
    with log.open("a") as fh:
        fh.write(run(["chroot", root, "apt-get", "update"], what="apt-get update in the image",
                     env=chroot_env).stdout)
    run(["chroot", root, "apt-get", "clean"], what="apt-get clean", env=chroot_env)
    # No identity in the image: every host gets its own machine-id and SSH host keys.
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/hostname").write_text("localhost\n")
    for name in ("var/lib/systemd/random-seed", "var/log/apt/eipp.log.xz"):
        (root / name).unlink(missing_ok=True)
    system = root / "etc/systemd/system"
    for timer in APT_TIMERS:
        (system / "timers.target.wants" / timer).unlink(missing_ok=True)
        mask = system / timer
        mask.unlink(missing_ok=True)
        mask.symlink_to("/dev/null")
    # Only root and the lab user log in, by key.
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/ssh/sshd_config.d/05-vllama-lab-base.conf").write_text(
        "# vllama-provision lab image\nPasswordAuthentication no\nUseDNS no\n"
        "PermitRootLogin prohibit-password\n")


def log_path(rec: Recipe) -> Path:
    """The build log of a recipe's image (kept after the build, beside the image)."""
    return golden_root() / f"{rec.key}.log"


def build(rec: Recipe, dest: Path, *, log: Path | None = None, show: bool = False) -> float:
    """Build the image for ``rec`` into ``dest`` (which must not exist). Returns seconds taken.

    With ``show``, the elapsed time and debootstrap's latest line are printed while it runs."""
    require_lab_machine(need_debootstrap=True)
    started = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{rec.key}-", dir=dest.parent))
    log = log or log_path(rec)
    log.write_text("")
    try:
        root = tmp / "rootfs"
        what = f"debootstrap {rec.suite} from {rec.mirrors.archive}"
        code = run_logged(["debootstrap", "--variant=minbase",
                           "--include=" + ",".join(rec.packages), rec.suite, root,
                           rec.mirrors.archive], log=log, what=f"golden image: {what}",
                          show=show)
        if code != 0:
            raise LabError(f"{what} failed (exit {code}): {last_line(log, 300)}; see {log}")
        _configure(root, rec, log)
        (tmp / "recipe.json").write_text(json.dumps(
            {"suite": rec.suite, "packages": list(rec.packages),
             "mirrors": [rec.mirrors.archive, rec.mirrors.security],
             "ca_certs": [list(c) for c in rec.ca_certs], "version": rec.version,
             "built_seconds": round(time.monotonic() - started, 1)}, indent=2) + "\n")
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return time.monotonic() - started


def cached(suite: str = DEFAULT_SUITE) -> Path | None:
    """The golden rootfs for ``suite`` if it is already built for the current recipe."""
    path = rootfs(recipe(suite))
    return path if path.is_dir() else None


def ensure(suite: str = DEFAULT_SUITE, show: bool = False) -> Path:
    """The cached golden rootfs for ``suite``, building it first when its recipe changed
    (``show``: print progress while it builds)."""
    rec = recipe(suite)
    dest = image_dir(rec)
    if (dest / "rootfs").is_dir():
        return dest / "rootfs"
    with file_lock(golden_root() / f".lock-{rec.key}"):
        if not (dest / "rootfs").is_dir():  # another builder may have finished meanwhile
            for stale in golden_root().glob(f".build-{rec.key}-*"):  # from a killed build
                shutil.rmtree(stale, ignore_errors=True)
            try:
                build(rec, dest, show=show)
            except LabError as exc:
                raise LabError(f"cannot build the {suite} golden image: {exc}") from exc
    return dest / "rootfs"
