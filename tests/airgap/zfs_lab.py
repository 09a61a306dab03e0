"""A real ZFS pool in a lab host: Debian's zfs-fuse (contrib) in a host started with --fuse.

OpenZFS needs kernel modules, which these machines cannot load; zfs-fuse runs the ZFS code in
user space through /dev/fuse. It is old (pool version 23: no lz4, recordsize at most 128K, no
xattr=sa), which is what the preflight's "what the pool supports" checks are tested against.

The .debs (zfs-fuse and whatever the golden image lacks for it) are downloaded once, inside a lab
host through the machine's configured Debian mirror, and cached on the controller under
``<cache>/zfs-fuse/<golden recipe key>/``; later hosts install them with dpkg, without apt.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from vllama_provision import paths
from vllama_provision.lab import golden
from vllama_provision.lab.handle import LabHost

POOL = "tank"
POOL_FILE = "/var/lib/zfs-lab/tank.img"
POOL_SIZE = "2G"
# The zfs-fuse init script exits 3 in a container (it cannot raise the locked-memory limit):
# ignore that exit status, and mount the datasets once the daemon runs.
DROP_IN = ("[Service]\nExecStart=\nExecStart=-/etc/init.d/zfs-fuse start\n"
           "ExecStartPost=/sbin/zfs mount -a\n")


def deb_cache() -> Path:
    return paths.cache_dir() / "zfs-fuse" / golden.recipe(golden.DEFAULT_SUITE).key


def _tar_out(host: LabHost, folder: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen([*host.ssh_argv(), f"cd {folder} && tar -cf - *.deb"],
                          stdout=subprocess.PIPE) as src:
        subprocess.run(["tar", "-C", str(dest), "-xf", "-"], stdin=src.stdout, check=True)
        if src.wait(timeout=120) != 0:
            raise RuntimeError(f"{host.name}: could not read the .debs in {folder}")


def _tar_in(host: LabHost, src: Path, folder: str) -> None:
    debs = sorted(p.name for p in src.glob("*.deb"))
    with subprocess.Popen(["tar", "-C", str(src), "-cf", "-", *debs],
                          stdout=subprocess.PIPE) as tar:
        proc = subprocess.run([*host.ssh_argv(), f"mkdir -p {folder} && tar -C {folder} -xf -"],
                              stdin=tar.stdout, capture_output=True, text=True, timeout=120,
                              check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{host.name}: copying the .debs failed: {proc.stderr[-2000:]}")


def ensure_debs(host: LabHost) -> Path:
    """The cached .debs, downloaded through ``host`` (apt, the machine's mirror) when missing."""
    cache = deb_cache()
    if (cache / "COMPLETE").is_file():
        return cache
    host.ssh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
             "--download-only --no-install-recommends zfs-fuse", timeout=600)
    tmp = cache.with_name(cache.name + ".tmp")
    subprocess.run(["rm", "-rf", str(tmp)], check=True)
    _tar_out(host, "/var/cache/apt/archives", tmp)
    if not any(tmp.glob("zfs-fuse_*.deb")):
        raise RuntimeError("apt downloaded no zfs-fuse .deb (is Debian contrib enabled?)")
    (tmp / "COMPLETE").write_text("\n".join(sorted(p.name for p in tmp.glob("*.deb"))) + "\n")
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    tmp.rename(cache)
    return cache


def install_zfs_fuse(host: LabHost) -> None:
    """zfs-fuse installed from the cached .debs and running under systemd."""
    debs = ensure_debs(host)
    host.ssh("mkdir -p /etc/systemd/system/zfs-fuse.service.d && "
             f"printf '{DROP_IN}' > /etc/systemd/system/zfs-fuse.service.d/lab.conf")
    _tar_in(host, debs, "/var/tmp/zfs-debs")
    host.ssh("DEBIAN_FRONTEND=noninteractive dpkg -i /var/tmp/zfs-debs/*.deb >/dev/null 2>&1 "
             "|| DEBIAN_FRONTEND=noninteractive dpkg -i /var/tmp/zfs-debs/*.deb; "
             "rm -rf /var/tmp/zfs-debs; systemctl daemon-reload && systemctl restart zfs-fuse "
             "&& systemctl is-active zfs-fuse", timeout=300)


def create_pool(host: LabHost, pool: str = POOL) -> None:
    """A pool in a sparse file, with no mountpoint of its own (no nested mounts)."""
    folder = str(Path(POOL_FILE).parent)
    host.ssh(f"mkdir -p {folder} && truncate -s {POOL_SIZE} {POOL_FILE} && "
             f"zpool create -m none {pool} {POOL_FILE} && zpool list -H -o name {pool}")


def zfs_host(host: LabHost) -> LabHost:
    install_zfs_fuse(host)
    create_pool(host)
    return host
