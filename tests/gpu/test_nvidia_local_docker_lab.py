"""The driver and container-toolkit roles run by ansible-playbook INSIDE a lab host against itself
(``ansible_connection=local``), with a real Docker engine in that host.

Proves, for real: the "never reboot over a local connection" rule (the driver changes, the host
is not rebooted, /var/run/reboot-required says why); the toolkit's signed-by repository, pin and
holds; daemon.json merged (the user's own keys survive) and a real dockerd that both reloads and
starts with the merged file and lists the nvidia runtime; the CDI spec generated once the module
is loaded, regenerated after a driver change, and left alone otherwise; the image CUDA preflight
naming both versions; idempotence.

Not exercised (no GPU, no loadable module): the nvidia kernel module itself, NVML (MOCK NVML),
``nvidia-ctk`` and ``nvidia-container-runtime`` (stand-ins from the test repository that record
their calls). The controller never runs a playbook against itself: the local run is inside the
lab host.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from gpu import nvidia_fakerepo as fr
from gpu import nvidia_labtools as lt

pytestmark = pytest.mark.lab
KERNEL = os.uname().release
USER_DAEMON_JSON = {"ip-forward": False, "bridge": "none", "iptables": False,
                    "log-level": "warn", "labels": ["owner=ops-team"],
                    "log-opts": {"max-size": "10m"}}
SRC = "/opt/vllama-test/src"
INSTANCES = [{"name": "chat", "engine": "vllm", "deploy": "container", "engine_version": "0.9.2",
              "model": "Qwen/Qwen2.5-0.5B-Instruct"}]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    built = fr.build(tmp_path_factory.mktemp("nvidia-repos") / "repo", KERNEL)
    built.serve()
    yield built
    built.stop()


def docker_runtimes(h) -> dict:
    out = h.ssh("docker info --format '{{json .Runtimes}}'", timeout=60).stdout
    return json.loads(out)


def wait_for_docker(h, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if h.ssh("docker info >/dev/null 2>&1", check=False, timeout=30).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError("dockerd did not answer: "
                         + h.ssh("journalctl -u docker --no-pager | tail -30", check=False).stdout)


def reboot(h, timeout: float = 120) -> None:
    h.ssh("systemctl reboot", check=False, timeout=30)
    time.sleep(3)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = h.ssh("systemctl is-system-running --wait", check=False, timeout=60)
        if proc.stdout.strip() in ("running", "degraded"):
            return
        time.sleep(1)
    raise AssertionError("the host did not come back")


def local_run(h, name: str, extra: dict, *args: str):
    """ansible-playbook inside the host, against itself over a local connection."""
    lt.put(h, f"/opt/vllama-test/{name}.json", json.dumps(extra))
    cmd = (f"cd /opt/vllama-test && PYTHONPATH={SRC} ANSIBLE_COLLECTIONS_PATH={SRC} "
           "ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 "
           f"{ANSIBLE} -i inventory.ini play.yml -e @{name}.json {' '.join(args)}")
    return h.ssh(cmd, check=False, timeout=600)


ANSIBLE = "/opt/vllama-test/ansible/bin/ansible-playbook"


@pytest.fixture(scope="module")
def runs(lab_factory_module, repos):
    lab = lab_factory_module(1, docker=True)
    h = lab.hosts[0]
    out: dict[str, object] = {"host": h}
    lt.fake_sysfs(h)
    lt.put(h, "/etc/docker/daemon.json", json.dumps(USER_DAEMON_JSON, indent=2))
    lt.install_docker(h)
    h.ssh("systemctl restart docker", check=False)
    wait_for_docker(h)
    out["runtimes_before"] = docker_runtimes(h)
    lt.use_test_mirror(h, repos)
    lt.install_ansible(h)
    lt.copy_project(h)
    lt.put(h, "/opt/vllama-test/inventory.ini",
           "localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n")
    lt.put(h, "/opt/vllama-test/play.yml",
           lt.playbook_text("vllama_nvidia_driver", "vllama_nvidia_container_toolkit"))
    extra = {**lt.role_vars(repos), "vllama_instances": INSTANCES}
    out["cuda_refused"] = local_run(h, "refuse", {
        **extra, "vllama_nvidia_container_toolkit_images": [
            {"image": "example.invalid/cuda:13.1", "cuda": "13.1"}]},
        "--tags", "vllama_nvidia_container_toolkit_preflight")
    out["first"] = local_run(h, "first", extra)
    out["daemon_json_first"] = json.loads(h.ssh("cat /etc/docker/daemon.json").stdout)
    out["runtimes_after_reload"] = docker_runtimes(h)
    out["cdi_after_first"] = h.ssh("test -e /etc/cdi/nvidia.yaml", check=False).returncode == 0
    out["boots_first"] = h.ssh(f"cat {fr.LOG_DIR}/boots.log", check=False).stdout
    # /run is a tmpfs: read what the role left there before the reboot below.
    out["reboot_required"] = h.ssh("cat /var/run/reboot-required /var/run/reboot-required.pkgs",
                                   check=False).stdout
    reboot(h)  # by hand, as the operator told by /var/run/reboot-required would
    wait_for_docker(h)
    out["runtimes_after_boot"] = docker_runtimes(h)
    out["second"] = local_run(h, "second", extra)
    out["ctk_after_second"] = h.ssh(f"cat {fr.LOG_DIR}/nvidia-ctk.log", check=False).stdout
    out["third"] = local_run(h, "third", extra)
    # A driver change (what the driver role records): the CDI spec is generated again.
    h.ssh("echo 575.57.08-1 > /etc/cdi/nvidia.yaml.driver")
    out["after_driver_change"] = local_run(h, "fourth", extra)
    out["ctk_final"] = h.ssh(f"cat {fr.LOG_DIR}/nvidia-ctk.log", check=False).stdout
    out["daemon_json_final"] = json.loads(h.ssh("cat /etc/docker/daemon.json").stdout)
    return out


def test_image_cuda_preflight_names_both_versions(runs):
    proc = runs["cuda_refused"]
    assert proc.returncode != 0
    assert "example.invalid/cuda:13.1 needs CUDA >= 13.1" in proc.stdout
    assert "the driver supports CUDA 13.0" in proc.stdout


def test_local_connection_never_reboots(runs):
    proc = runs["first"]
    assert proc.returncode == 0, lt.explain(proc)
    assert "not rebooting because the connection is local" in proc.stdout
    assert "System restart required" in runs["reboot_required"]
    assert "nvidia-open" in runs["reboot_required"]
    assert runs["boots_first"] == ""  # the module-load stand-in has not run: no reboot
    assert not runs["cdi_after_first"]  # the module is not loaded before the reboot


def test_daemon_json_keeps_the_users_keys_and_gains_the_runtime(runs):
    merged = runs["daemon_json_first"]
    for key, value in USER_DAEMON_JSON.items():
        assert merged[key] == value
    assert merged["runtimes"] == {"nvidia": {"path": "nvidia-container-runtime", "args": []}}
    assert runs["daemon_json_final"] == merged  # later runs leave it alone


def test_dockerd_lists_the_nvidia_runtime_after_reload_and_after_a_fresh_start(runs):
    assert "nvidia" not in runs["runtimes_before"]
    assert runs["runtimes_after_reload"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert runs["runtimes_after_boot"]["nvidia"]["path"] == "nvidia-container-runtime"


def test_toolkit_is_pinned_held_and_signed(runs):
    h = runs["host"]
    assert h.ssh("dpkg-query -W -f '${Version}' nvidia-container-toolkit").stdout == \
        f"{fr.TOOLKIT}-1"
    held = set(h.ssh("apt-mark showhold").stdout.split())
    assert {"nvidia-container-toolkit", "nvidia-container-toolkit-base",
            "libnvidia-container-tools", "libnvidia-container1", "nvidia-open"} <= held
    source = h.ssh("cat /etc/apt/sources.list.d/vllama-nvidia-container-toolkit.sources").stdout
    assert "Signed-By: /etc/apt/keyrings/vllama-nvidia-container-toolkit.asc" in source


def test_cdi_spec_generated_after_the_module_loads_then_left_alone(runs):
    assert runs["second"].returncode == 0, lt.explain(runs["second"])
    assert runs["ctk_after_second"].count("cdi generate") == 1
    h = runs["host"]
    assert "kind: nvidia.com/gpu" in h.ssh("cat /etc/cdi/nvidia.yaml").stdout
    third = runs["third"]
    assert third.returncode == 0, lt.explain(third)
    assert lt.recap(third.stdout)["changed"] == 0, third.stdout[-4000:]


def test_cdi_spec_regenerated_after_a_driver_change(runs):
    proc = runs["after_driver_change"]
    assert proc.returncode == 0, lt.explain(proc)
    assert runs["ctk_final"].count("cdi generate") == 2
    h = runs["host"]
    assert h.ssh("cat /etc/cdi/nvidia.yaml.driver").stdout.strip() == f"{fr.DRIVER}-1"
