"""Signed package repositories with NVIDIA's package names, built by the tests, served on loopback.

Real .deb packages (dpkg-deb) with NVIDIA's names, versions, dependencies and maintainer scripts;
Packages/Release files signed with a test GPG key (InRelease and Release.gpg), so apt checks them
through ``signed-by`` exactly as it checks NVIDIA's. What the packages contain is small: no
kernel module can be built or loaded here, so the DKMS package's ``dkms`` writes an ``nvidia.ko``
stub carrying the running kernel's ``vermagic`` (what ``modinfo`` and the GPU health check read),
and a boot-time unit plays the kernel loading the module: it writes the module's version under
the host's fake sysfs tree. Everything else (dpkg, apt, triggers, holds, systemd units) is real.

Three repositories, laid out like the real ones:

* ``/cuda/debian12/x86_64/`` (flat, like NVIDIA's CUDA repository): the driver on branch 580
  (580.82.07-1) and a newer branch (590.48.01-1) that the pin must ignore;
* ``/libnvidia-container/stable/deb/amd64/`` (flat): the container toolkit 1.17.8-1 and 1.18.0-1;
* ``/debian/`` (``dists/bookworm/main``, like the distribution mirror of an offline site): the
  running kernel's headers, ``dkms`` and ``initramfs-tools`` (whose ``update-initramfs`` records
  each call and which has an interest in the ``update-initramfs`` trigger the DKMS package
  activates).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

DRIVER = "580.82.07"
DRIVER_NEWER = "590.48.01"
TOOLKIT = "1.17.8"
TOOLKIT_NEWER = "1.18.0"
FAKE_SYSFS = "/srv/vllama-test/sys"
MOCK_DIR = "/srv/vllama-test/mock_nvml"
SCENARIO = "/etc/vllama-test/nvml-scenario.json"
LOG_DIR = "/var/log/vllama-test"
RTX4090_UUID = "GPU-5ba5a3b0-6bb1-4d1c-9a2c-0f3b0e2b6a11"


@dataclass
class Package:
    name: str
    version: str
    depends: list[str] = field(default_factory=list)
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (text, mode)
    postinst: str = ""
    triggers: str = ""
    description: str = "vllama-provision test package"


def _log(pkg: str) -> str:
    return (f'mkdir -p {LOG_DIR} && echo "{pkg} $1 $2" >> {LOG_DIR}/postinst.log\n')


def driver_packages(version: str, kernel: str) -> list[Package]:
    v = f"{version}-1"
    dkms_postinst = _log("{name}") + textwrap.dedent(f"""\
        if [ "$1" = configure ]; then
            dkms build -m nvidia -v {version} -k {kernel}
        fi
        """)
    scenario = json.dumps({
        "driver_version": version, "cuda_driver_version": 13000 if version.startswith("580")
        else 13010, "nvml_version": f"13.{version}",
        "gpus": [{"uuid": RTX4090_UUID, "name": "NVIDIA GeForce RTX 4090",
                  "memory_total": 25757220864, "compute_capability": [8, 9],
                  "mig": "unsupported", "pci_bus_id": "00000000:01:00.0"}]}) + "\n"
    load_unit = textwrap.dedent(f"""\
        [Unit]
        Description=TEST STAND-IN for the kernel loading the nvidia module at boot
        DefaultDependencies=no
        Before=nvidia-persistenced.service

        [Service]
        Type=oneshot
        ExecStart=/bin/mkdir -p {FAKE_SYSFS}/module/nvidia {LOG_DIR}
        ExecStart=/bin/sh -c 'echo {version} > {FAKE_SYSFS}/module/nvidia/version'
        ExecStart=/bin/sh -c 'echo boot >> {LOG_DIR}/boots.log'

        [Install]
        WantedBy=multi-user.target
        """)
    packages = []
    for name in ("nvidia-kernel-open-dkms", "nvidia-kernel-dkms"):
        packages.append(Package(
            name, v, depends=["dkms"],
            files={f"/usr/lib/systemd/system/vllama-test-{name}-load.service": (load_unit, 0o644),
                   f"/usr/src/nvidia-{version}/dkms.conf": (f'PACKAGE_VERSION="{version}"\n',
                                                          0o644)},
            postinst=dkms_postinst.replace("{name}", name) + textwrap.dedent(f"""\
                if [ "$1" = configure ]; then
                    systemctl enable vllama-test-{name}-load.service >/dev/null 2>&1 || true
                fi
                """),
            triggers="activate-noawait update-initramfs\n"))
    packages += [
        Package("libnvidia-ml1", v, files={
            f"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{version}": ("stand-in\n", 0o644),
            SCENARIO: (scenario, 0o644)}, postinst=_log("libnvidia-ml1")),
        Package("nvidia-persistenced", v, files={
            "/usr/bin/nvidia-persistenced": ("#!/bin/sh\nexec sleep infinity\n", 0o755),
            "/usr/lib/systemd/system/nvidia-persistenced.service": (textwrap.dedent("""\
                [Unit]
                Description=NVIDIA Persistence Daemon (test stand-in)

                [Service]
                ExecStart=/usr/bin/nvidia-persistenced

                [Install]
                WantedBy=multi-user.target
                """), 0o644)}, postinst=_log("nvidia-persistenced")),
        Package("nvidia-driver", v, depends=[f"libnvidia-ml1 (= {v})",
                                             f"nvidia-persistenced (= {v})"],
                postinst=_log("nvidia-driver")),
        Package("nvidia-open", v, depends=[f"nvidia-kernel-open-dkms (= {v})",
                                           f"nvidia-driver (= {v})"], postinst=_log("nvidia-open")),
        Package("cuda-drivers", v, depends=[f"nvidia-kernel-dkms (= {v})",
                                            f"nvidia-driver (= {v})"],
                postinst=_log("cuda-drivers")),
    ]
    return packages


FAKE_CTK = r"""#!/bin/sh
# TEST STAND-IN for nvidia-ctk: records its calls; `cdi generate` writes a small spec.
mkdir -p /var/log/vllama-test
echo "nvidia-ctk $*" >> /var/log/vllama-test/nvidia-ctk.log
case "$1 $2" in
  "cdi generate")
    out=/etc/cdi/nvidia.yaml
    for a in "$@"; do case "$a" in --output=*) out="${a#--output=}";; esac; done
    mkdir -p "$(dirname "$out")"
    printf 'cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: "0"\n' > "$out"
    printf '  containerEdits:\n    deviceNodes:\n    - path: /dev/nvidia0\n' >> "$out"
    ;;
  "--version "*) echo "NVIDIA Container Toolkit CLI version @VERSION@";;
esac
"""
FAKE_RUNTIME = ("#!/bin/sh\n# TEST STAND-IN for nvidia-container-runtime: hands over to runc.\n"
                'exec runc "$@"\n')


def toolkit_packages(version: str) -> list[Package]:
    v = f"{version}-1"
    return [
        Package("libnvidia-container1", v),
        Package("libnvidia-container-tools", v, depends=[f"libnvidia-container1 (= {v})"]),
        Package("nvidia-container-toolkit-base", v, files={
            "/usr/bin/nvidia-ctk": (FAKE_CTK.replace("@VERSION@", version), 0o755)}),
        Package("nvidia-container-toolkit", v, depends=[
            f"nvidia-container-toolkit-base (= {v})", f"libnvidia-container-tools (= {v})"],
            files={"/usr/bin/nvidia-container-runtime": (FAKE_RUNTIME, 0o755)},
            postinst=_log("nvidia-container-toolkit")),
    ]


def mirror_packages(kernel: str) -> list[Package]:
    fake_dkms = textwrap.dedent(f"""\
        #!/bin/sh
        # TEST STAND-IN for dkms: no compiler, no kernel module build here. "Builds" an nvidia.ko
        # stub carrying the kernel's vermagic, as a real build would install it.
        mkdir -p {LOG_DIR}
        echo "dkms $*" >> {LOG_DIR}/dkms.log
        kernel=$(uname -r); version=""; action=$1
        while [ $# -gt 0 ]; do
            case "$1" in -k) kernel=$2; shift;; -v) version=$2; shift;; esac; shift
        done
        if [ "$action" = autoinstall ]; then
            # Build every module source present (the headers' header_postinst.d hook does this).
            for conf in /usr/src/nvidia-*/dkms.conf; do
                [ -e "$conf" ] || continue
                . "$conf"
                "$0" build -m nvidia -v "$PACKAGE_VERSION" -k "$kernel"
            done
            exit 0
        fi
        dir=/lib/modules/$kernel/updates/dkms
        if [ ! -d /lib/modules/$kernel/build ]; then
            # As the real dkms: skipped, not failed; the headers' install builds it later.
            echo "Module build for kernel $kernel was skipped since the kernel headers for this" \
                 "kernel do not seem to be installed." >&2
            exit 0
        fi
        mkdir -p $dir
        magic="$kernel SMP preempt mod_unload modversions "
        printf 'ELF-stand-in\\0version=%s\\0vermagic=%s\\0name=nvidia\\0' "$version" "$magic" \\
            > $dir/nvidia.ko
        """)
    initramfs = textwrap.dedent(f"""\
        #!/bin/sh
        # TEST STAND-IN for update-initramfs: records each call.
        mkdir -p {LOG_DIR}
        echo "update-initramfs $*" >> {LOG_DIR}/initramfs.log
        """)
    return [
        Package(f"linux-headers-{kernel}", "1.0-1", files={
            f"/usr/src/linux-headers-{kernel}/Makefile": ("# headers stand-in\n", 0o644)},
            postinst=f'ln -sfn /usr/src/linux-headers-{kernel} /lib/modules/{kernel}/build '
                     f'2>/dev/null || {{ mkdir -p /lib/modules/{kernel} && ln -sfn '
                     f'/usr/src/linux-headers-{kernel} /lib/modules/{kernel}/build; }}\n'
                     # dkms's /etc/kernel/header_postinst.d hook: build what waited for them.
                     f'if [ -x /usr/sbin/dkms ]; then dkms autoinstall -k {kernel}; fi\n'),
        Package("dkms", "3.0.10-8", files={"/usr/sbin/dkms": (fake_dkms, 0o755)}),
        Package("initramfs-tools", "0.142", files={
            "/usr/sbin/update-initramfs": (initramfs, 0o755)},
            postinst='if [ "$1" = triggered ]; then update-initramfs -u; fi\n',
            triggers="interest-noawait update-initramfs\n"),
    ]


# --- building ---

def build_deb(pkg: Package, out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        (root / "DEBIAN").mkdir(parents=True)
        for path, (text, mode) in pkg.files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(mode)
        control = [f"Package: {pkg.name}", f"Version: {pkg.version}", "Architecture: amd64",
                   "Maintainer: vllama-provision tests <tests@invalid>", "Section: non-free/libs",
                   "Priority: optional", f"Description: {pkg.description}"]
        if pkg.depends:
            control.insert(3, "Depends: " + ", ".join(pkg.depends))
        (root / "DEBIAN/control").write_text("\n".join(control) + "\n")
        if pkg.postinst:
            script = root / "DEBIAN/postinst"
            script.write_text("#!/bin/sh\nset -e\n" + pkg.postinst)
            script.chmod(0o755)
        if pkg.triggers:
            (root / "DEBIAN/triggers").write_text(pkg.triggers)
        deb = out / f"{pkg.name}_{pkg.version}_amd64.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root),
                        str(deb)], check=True, capture_output=True)
    return deb


def _digests(path: Path) -> tuple[int, str, str]:
    data = path.read_bytes()
    return len(data), hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()


def packages_index(debs: list[Path], base: Path) -> str:
    stanzas = []
    for deb in sorted(debs):
        control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True,
                                 text=True).stdout.rstrip("\n")
        size, md5, sha256 = _digests(deb)
        stanzas.append(f"{control}\nFilename: {deb.relative_to(base).as_posix()}\n"
                       f"Size: {size}\nMD5sum: {md5}\nSHA256: {sha256}\n")
    return "\n".join(stanzas)


class TestKey:
    """A throwaway signing key in its own GnuPG home."""

    def __init__(self, home: Path):
        self.home = home
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._gpg("--quick-gen-key", "--passphrase", "", "vllama-provision test repository "
                  "<tests@invalid>", "ed25519", "sign", "never")
        out = self._gpg("--with-colons", "--list-keys").stdout
        self.fingerprint = next(line.split(":")[9] for line in out.splitlines()
                                if line.startswith("fpr:"))
        self.armored = self._gpg("--armor", "--export", self.fingerprint).stdout

    def _gpg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["gpg", "--homedir", str(self.home), "--batch", "--yes",
                               "--pinentry-mode", "loopback", *args], check=True,
                              capture_output=True, text=True)

    def sign(self, release: Path) -> None:
        self._gpg("--local-user", self.fingerprint, "--clearsign", "--output",
                  str(release.parent / "InRelease"), str(release))
        self._gpg("--local-user", self.fingerprint, "--armor", "--detach-sign", "--output",
                  str(release.parent / "Release.gpg"), str(release))


def _release(folder: Path, files: list[Path], **fields: str) -> Path:
    lines = [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    lines.append(f"Date: {formatdate(usegmt=True)}")
    lines.append("SHA256:")
    for f in files:
        size, _md5, sha256 = _digests(f)
        lines.append(f" {sha256} {size} {f.relative_to(folder).as_posix()}")
    release = folder / "Release"
    release.write_text("\n".join(lines) + "\n")
    return release


def flat_repo(folder: Path, packages: list[Package], key: TestKey, label: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    debs = [build_deb(p, folder) for p in packages]
    index = folder / "Packages"
    index.write_text(packages_index(debs, folder))
    with gzip.open(folder / "Packages.gz", "wb") as gz:
        gz.write(index.read_bytes())
    key.sign(_release(folder, [index, folder / "Packages.gz"], Origin=label, Label=label,
                      Architectures="amd64"))


def suite_repo(root: Path, suite: str, packages: list[Package], key: TestKey) -> None:
    pool = root / "pool/main"
    pool.mkdir(parents=True, exist_ok=True)
    debs = [build_deb(p, pool) for p in packages]
    dist = root / "dists" / suite
    binary = dist / "main/binary-amd64"
    binary.mkdir(parents=True, exist_ok=True)
    (binary / "Packages").write_text(packages_index(debs, root))
    key.sign(_release(dist, [binary / "Packages"], Origin="Debian", Label="Debian",
                      Suite=suite, Codename=suite, Architectures="amd64", Components="main"))


@dataclass
class Repos:
    root: Path
    key: TestKey
    port: int = 0
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cuda(self) -> str:
        return f"{self.url}/cuda/debian12/x86_64/"

    @property
    def toolkit(self) -> str:
        return f"{self.url}/libnvidia-container/stable/deb/amd64/"

    @property
    def mirror(self) -> str:
        return f"{self.url}/debian"

    def serve(self) -> None:
        root = str(self.root)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=root, **kwargs)

            def log_message(self, format, *args):
                with open(os.path.join(root, "access.log"), "a") as log:
                    log.write(format % args + "\n")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        with socket.create_connection(("127.0.0.1", self.port), timeout=5):
            pass

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def build(root: Path, kernel: str) -> Repos:
    """Build and sign the three repositories under ``root``."""
    if root.exists():
        shutil.rmtree(root)
    key = TestKey(root.parent / f"{root.name}-gnupg")
    cuda = root / "cuda/debian12/x86_64"
    flat_repo(cuda, driver_packages(DRIVER, kernel) + driver_packages(DRIVER_NEWER, kernel),
              key, "NVIDIA")
    (cuda / "testkey.pub").write_text(key.armored)
    toolkit = root / "libnvidia-container/stable/deb/amd64"
    flat_repo(toolkit, toolkit_packages(TOOLKIT) + toolkit_packages(TOOLKIT_NEWER), key,
              "NVIDIA")
    (root / "libnvidia-container/gpgkey").write_text(key.armored)
    suite_repo(root / "debian", "bookworm", mirror_packages(kernel), key)
    (root / "debian/testkey.asc").write_text(key.armored)
    return Repos(root=root, key=key)
