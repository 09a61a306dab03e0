"""A llama.cpp server image built locally, as a ``docker save`` archive (test code).

No registry is reachable here, so the image the container test runs is built on the
controller, cached per recipe under ``<cache>/images/<key>/image.tar``:

* root filesystem: the lab's bookworm golden image (Debian 12 minbase with python3 and curl,
  which the rendered healthcheck uses), without docs and apt lists;
* ``/opt/xllamacpp``: the xllamacpp wheel (llama.cpp's own C++ HTTP server in a Python
  extension, portable x86-64 build), and ``/usr/local/bin/llama-server``: the launcher the role
  installs on Macs (roles/vllama/files/llama-server), which takes the llama-server flags
  vllama-provision renders for the official ``ghcr.io/ggml-org/llama.cpp:server`` image.

The archive is in ``docker save`` format (manifest.json, config, one layer), so the role's
``image_archive`` path loads it with ``docker load`` like any saved image.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vllama_provision import paths
from vllama_provision.lab import golden

XLLAMACPP = "xllamacpp==2026.10.11549"
ENTRYPOINT = paths.data_root() / "roles" / "vllama" / "files" / "llama-server"
REPOSITORY = "vllama-test/llama-server"
EXCLUDES = ["./usr/share/doc", "./usr/share/man", "./usr/share/locale", "./usr/share/info",
            "./var/lib/apt/lists", "./var/cache/apt", "./root/.ssh", "./etc/ssh/ssh_host_*"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _libgomp_version() -> str:
    proc = subprocess.run(["apt-cache", "policy", "libgomp1"], capture_output=True, text=True,
                          check=False)
    match = [line.split()[-1] for line in proc.stdout.splitlines() if "Candidate:" in line]
    return match[0] if match else "unknown"


def build_image(log: Path) -> tuple[str, Path]:
    """(image reference, archive path), built once per recipe."""
    rootfs = golden.ensure(golden.DEFAULT_SUITE)
    recipe = json.dumps({"golden": str(rootfs), "xllamacpp": XLLAMACPP, "layout": 5,
                         "libgomp": _libgomp_version(),
                         "entrypoint": _sha256(ENTRYPOINT), "excludes": EXCLUDES},
                        sort_keys=True)
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    reference = f"{REPOSITORY}:{key}"
    target = paths.cache_dir() / "images" / key
    archive = target / "image.tar"
    if (target / "COMPLETE").is_file():
        return reference, archive
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".image-", dir=target.parent))
    extra = work / "extra"
    with log.open("a") as out:
        subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                        "-q", "--no-deps", "--target", str(extra / "opt/xllamacpp"), XLLAMACPP],
                       stdout=out, stderr=subprocess.STDOUT, check=True)
        # xllamacpp links libgomp (OpenMP), which Debian's minbase lacks: the Debian package's
        # library, added as new files only.
        subprocess.run(["apt-get", "download", "-q", "libgomp1"], cwd=work, stdout=out,
                       stderr=subprocess.STDOUT, check=True)
    deb = next(work.glob("libgomp1_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(extra)], check=True)
    libs = sorted(str(p.relative_to(extra)) for p in extra.glob("usr/lib/*/libgomp.so.1*"))
    (extra / "usr/local/bin").mkdir(parents=True)
    shutil.copy2(ENTRYPOINT, extra / "usr/local/bin/llama-server")
    (extra / "usr/local/bin/llama-server").chmod(0o755)
    layer = work / "layer.tar"
    subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner",
                    *[f"--exclude={e}" for e in EXCLUDES], "-cf", str(layer), "."], check=True)
    subprocess.run(["tar", "-C", str(extra), "--owner=0", "--group=0", "--numeric-owner",
                    "-rf", str(layer), "opt/xllamacpp", "usr/local/bin/llama-server", *libs],
                   check=True)  # new paths only: Docker refuses duplicate entries in a layer
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": ["/usr/bin/python3", "/usr/local/bin/llama-server"],
                         "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:"
                                 "/bin", "PYTHONPATH=/opt/xllamacpp"]},
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_sha256(layer)}"]}}
    config_blob = json.dumps(config).encode()
    config_name = f"{hashlib.sha256(config_blob).hexdigest()}.json"
    (work / config_name).write_bytes(config_blob)
    manifest = [{"Config": config_name, "RepoTags": [reference], "Layers": ["layer.tar"]}]
    (work / "manifest.json").write_text(json.dumps(manifest))
    folder = work / "out"
    folder.mkdir()
    subprocess.run(["tar", "-C", str(work), "-cf", str(folder / "image.tar"), "manifest.json",
                    config_name, "layer.tar"], check=True)
    (folder / "COMPLETE").write_text(reference + "\n")
    if target.exists():
        shutil.rmtree(target)
    folder.rename(target)
    shutil.rmtree(work, ignore_errors=True)
    return reference, archive


# The site's own Docker settings in a docker lab host (containers use host networking), which
# the role never overwrites.
SITE_DAEMON_JSON = {"ip-forward": False, "bridge": "none", "log-level": "warn"}


def timed_image(times: dict[str, float]) -> tuple[str, Path]:
    """``build_image`` for a test module, its time recorded as ``image_s``."""
    started = time.monotonic()
    built = build_image(Path(".test-logs/llama-server-image.log"))
    times["image_s"] = time.monotonic() - started
    return built


def docker_lab(lab_factory: Any, **flags: Any) -> Any:
    """One ``--docker`` lab host (plus ``flags``) with the site's daemon.json written."""
    lab = lab_factory(1, docker=True, **flags)
    lab.hosts[0].ssh(f"mkdir -p /etc/docker && printf '%s\\n' '{json.dumps(SITE_DAEMON_JSON)}' "
                     "> /etc/docker/daemon.json")
    return lab
