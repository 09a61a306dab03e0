"""A container instance on an air-gapped host, for real: Docker and the image from a bundle.

One ``--isolated --docker`` lab host (no route anywhere; it may run a real Docker engine, which
its golden image does not have). The bundle is built by the real ``bundle`` command from an
inventory with a container instance: the Docker engine packages (``docker.io`` and its
dependencies) join the host's signed package repository, and the image comes from the instance's
``image_archive`` (the gpu tier's locally built llama.cpp server image, a ``docker save``
archive): no Docker engine is needed on the controller. ``apply --bundle`` installs Docker from
the bundle's repository, loads the image from the bundle (checked against the manifest on the
host) and verifies the endpoint; nothing is pulled and no mirror is reached.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import SMOLLM2, write_inventory
from gpu.image_fixture import docker_lab, timed_image

from vllama_provision import paths

pytestmark = pytest.mark.lab

TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def image() -> tuple[str, Path]:
    return timed_image(TIMES)


@pytest.fixture(scope="module")
def lab(lab_factory_module: Any, lab_golden: Path) -> Any:
    return docker_lab(lab_factory_module, isolated=True)


@pytest.fixture(scope="module")
def inventory(lab: Any, image: tuple[str, Path],
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    reference, archive = image
    instance = {"name": "boxed", "engine": "llamacpp", "deploy": "container",
                "model": SMOLLM2, "served_name": "smollm2-boxed", "port": 8080,
                "ctx_size": 2048, "threads": 1, "image": reference,
                "image_archive": str(archive)}
    path = tmp_path_factory.mktemp("inv") / "container-airgap.yml"
    return write_inventory(lab, path, {lab.hosts[0].name: {
        "vllama_platform": "linux-cpu", "vllama_os": "debian12", "vllama_arch": "x86_64",
        "vllama_python": "3.11", "vllama_instances": [instance]}})


def test_docker_and_the_image_come_from_the_bundle(lab: Any, inventory: Path, bundle_key: Path,
                                                   image: tuple[str, Path],
                                                   run_cli: Any) -> None:
    host = lab.hosts[0]
    routes = host.ssh("ip -4 route show").stdout
    assert "default" not in routes and "via" not in routes, routes
    assert host.ssh("command -v dockerd", check=False).returncode != 0, "Docker preinstalled?"

    out = paths.cache_dir() / "test-bundles" / "airgap-container"
    started = time.monotonic()
    bundled = run_cli("bundle", str(inventory), "--out", str(out), "--sign-key", str(bundle_key),
                      timeout=1800)
    TIMES["bundle_s"] = time.monotonic() - started
    assert bundled.rc == 0, bundled.stderr[-3000:]
    items = {(i["kind"], i["name"]): i for i in bundled.report["items"]}
    assert items[("image", image[0])]["status"] in ("fetched", "reused")
    assert not any(kind == "wheels" for kind, _ in items), "a container needs no engine wheels"

    started = time.monotonic()
    result = run_cli("apply", str(inventory), "--bundle", str(out), "--bundle-key",
                     f"{bundle_key}.pub", timeout=1500)
    TIMES["apply_s"] = time.monotonic() - started
    assert result.rc == 0, result.stderr[-3000:]
    inst = result.instance(host.name, "boxed")
    assert inst["verified"] is True and inst["answer"].strip()

    assert host.ssh("dpkg-query -W -f '${Status}' docker.io").stdout == "install ok installed"
    loaded = host.ssh(f"docker image inspect --format '{{{{.Id}}}}' {image[0]}")
    assert loaded.returncode == 0 and loaded.stdout.startswith("sha256:")
    state = host.ssh("docker inspect --format '{{.State.Running}} {{.Config.Image}}' "
                     "vllama-boxed").stdout.split()
    assert state == ["true", image[0]]
    print(f"container air-gapped timings: {TIMES}")
