"""The GPU facts module and the NVIDIA driver role, for real on a lab host over SSH.

What runs for real: Ansible over SSH, the facts and GPU-health modules (with the nvidia-ml-py
they carry), apt against signed repositories the test builds (real .deb packages with NVIDIA's
names, versions, dependencies and maintainer scripts, served on loopback and trusted through
``signed-by`` only), the branch pin, ``apt-mark`` holds, the nouveau blacklist, the dpkg
``update-initramfs`` trigger and the role's own initramfs rebuild, systemd units
(nvidia-persistenced), the reboot (``ansible.builtin.reboot`` restarts the host) and a second run
changing nothing.

What does NOT run, because no GPU and no loadable kernel module exist here: building and loading
the nvidia kernel module, and NVML itself. Stand-ins, named as such: the MOCK NVML
(tests/fixtures/mock_nvml, raising the real nvidia-ml-py exception classes), a fake sysfs tree with
an NVIDIA device on its PCI bus, a ``dkms`` that writes a module stub carrying the running
kernel's vermagic, and a boot unit that plays the kernel loading the module (it writes the
module version under the fake sysfs).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from gpu import nvidia_fakerepo as fr
from gpu import nvidia_labtools as lt
from vllama_provision.gpu import validate_host_facts

pytestmark = pytest.mark.lab
KERNEL = os.uname().release
HOLDS = {"nvidia-open", "nvidia-kernel-open-dkms", "nvidia-driver", "libnvidia-ml1",
         "nvidia-persistenced"}


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    built = fr.build(tmp_path_factory.mktemp("nvidia-repos") / "repo", KERNEL)
    built.serve()
    yield built
    built.stop()


@pytest.fixture(scope="module")
def host(lab_factory_module):
    return lab_factory_module(1)


def facts_via_ansible(lab, tmp: Path, **args: str) -> dict:
    """Run vllama_host_facts through Ansible on the lab host (the nvidia-ml-py it carries)."""
    return lt.run_module(lab.inventory_path, "vllama_host_facts", dict(args), tmp)["vllama_facts"]


@pytest.fixture(scope="module")
def runs(host, repos, tmp_path_factory):
    """Everything that changes the host, in order; the tests below read the results."""
    tmp = tmp_path_factory.mktemp("driver-runs")
    h = host.hosts[0]
    out: dict[str, object] = {}
    lt.fake_sysfs(h)
    lt.drop_distribution_sources(h)
    play = tmp / "driver.yml"
    play.write_text(lt.playbook_text("vllama_nvidia_driver"))
    extra = lt.role_vars(repos)
    # 1. No source has the running kernel's headers: the preflight refuses, nothing changes.
    out["no_headers"] = lt.run_playbook(host.inventory_path, play, extra, tmp)
    out["no_headers_files"] = h.ssh("ls /etc/apt/sources.list.d /etc/modprobe.d; "
                                    "dpkg -l 'nvidia-*' 2>&1 | tail -n +6", check=False).stdout
    # 2. A Pascal card with open modules asked for: refused with the reason.
    lt.fake_sysfs(h, device_id="0x1b06")
    out["pascal_open"] = lt.run_playbook(host.inventory_path, play, {
        **extra, "vllama_nvidia_driver_kernel_modules": "open"}, tmp)
    lt.fake_sysfs(h)
    # 3. The site's mirror (headers, dkms, initramfs-tools) and an old NVIDIA list file.
    lt.use_test_mirror(h, repos)
    h.ssh(f"echo 'deb [trusted=yes] {repos.cuda} /' > /etc/apt/sources.list.d/cuda.list")
    out["first"] = lt.run_playbook(host.inventory_path, play, extra, tmp)
    out["boots_after_first"] = h.ssh(f"cat {fr.LOG_DIR}/boots.log", check=False).stdout
    out["second"] = lt.run_playbook(host.inventory_path, play, extra, tmp)
    out["boots_after_second"] = h.ssh(f"cat {fr.LOG_DIR}/boots.log", check=False).stdout
    out["health"] = lt.run_module(host.inventory_path, "vllama_gpu_health",
                                  {"pynvml_path": fr.MOCK_DIR, "sysfs_root": fr.FAKE_SYSFS}, tmp,
                                  env={"VLLAMA_MOCK_NVML_SCENARIO": fr.SCENARIO})
    return out


# --- the facts module through Ansible, before anything is installed ---

def test_facts_without_a_gpu_are_explicitly_empty(host, tmp_path):
    # The real nvidia-ml-py carried by the module; this host has no NVIDIA library or device.
    facts = facts_via_ansible(host, tmp_path)
    assert facts["nvidia"] == {"nvml": "absent", "error": None, "driver_version": None,
                               "cuda_version": None, "nvml_version": None, "pci_devices": []}
    assert facts["gpus"] == []
    assert validate_host_facts(facts) == []
    assert facts["platform"]["kernel"] == KERNEL


def test_facts_nvidia_on_the_pci_bus_without_a_driver(host, tmp_path):
    lt.fake_sysfs(host.hosts[0])
    facts = facts_via_ansible(host, tmp_path, sysfs_root=fr.FAKE_SYSFS)
    assert facts["nvidia"]["nvml"] == "library_not_found"  # the real library raised it
    assert facts["nvidia"]["pci_devices"][0]["device_id"] == "0x2684"
    assert facts["gpus"] == [] and validate_host_facts(facts) == []


@pytest.mark.parametrize(("scenario", "state"), [
    ({"init_error": "NVML_ERROR_DRIVER_NOT_LOADED"}, "driver_not_loaded"),
    ({"init_error": "NVML_ERROR_LIB_RM_VERSION_MISMATCH"}, "mismatch"),
])
def test_facts_mock_nvml_failures_through_ansible(host, tmp_path, scenario, state):
    h = host.hosts[0]
    lt.fake_sysfs(h)
    lt.put(h, "/srv/vllama-test/scenario.json", json.dumps(scenario))
    facts = lt.facts_with_mock(host, tmp_path, "/srv/vllama-test/scenario.json")
    assert facts["nvidia"]["nvml"] == state and facts["gpus"] == []
    assert validate_host_facts(facts) == []


def test_facts_mock_nvml_gpu_through_ansible(host, tmp_path):
    h = host.hosts[0]
    scenario = {"driver_version": "580.82.07", "cuda_driver_version": 13000,
                "nvml_version": "13.580.82.07", "gpus": [{
                    "uuid": fr.RTX4090_UUID, "name": "NVIDIA GeForce RTX 4090",
                    "memory_total": 25757220864, "compute_capability": [8, 9],
                    "mig": "unsupported", "pci_bus_id": "00000000:01:00.0"}]}
    lt.put(h, "/srv/vllama-test/scenario.json", json.dumps(scenario))
    facts = lt.facts_with_mock(host, tmp_path, "/srv/vllama-test/scenario.json")
    assert facts["nvidia"]["cuda_version"] == "13.0"
    assert facts["gpus"][0]["mig_mode"] == "unsupported"  # NVMLError_NotSupported from the mock
    assert facts["gpus"][0]["compute_capability"] == "8.9"
    assert validate_host_facts(facts) == []


# --- the driver role ---

def test_preflight_refuses_when_the_kernel_headers_cannot_be_installed(runs):
    proc = runs["no_headers"]
    assert proc.returncode != 0
    assert f"headers cannot be installed (no candidate for linux-headers-{KERNEL}" in proc.stdout
    assert lt.recap(proc.stdout)["changed"] == 0
    assert "vllama-nvidia-cuda.sources" not in runs["no_headers_files"]
    assert "vllama-blacklist-nouveau.conf" not in runs["no_headers_files"]


def test_preflight_refuses_open_modules_on_a_pascal_card(runs):
    proc = runs["pascal_open"]
    assert proc.returncode != 0
    assert "open kernel modules support Turing" in proc.stdout and "0x1b06" in proc.stdout
    assert lt.recap(proc.stdout)["changed"] == 0


def test_first_run_installs_the_pinned_branch_and_reboots(runs, host):
    proc = runs["first"]
    assert proc.returncode == 0, lt.explain(proc)
    assert "open kernel modules: every GPU is Turing or newer" in proc.stdout
    assert lt.recap(proc.stdout)["changed"] > 0
    h = host.hosts[0]
    versions = h.ssh("dpkg-query -W -f '${Package}=${Version}\\n' 'nvidia-*' 'libnvidia-*'"
                     ).stdout.split()
    assert f"nvidia-open={fr.DRIVER}-1" in versions
    assert f"nvidia-kernel-open-dkms={fr.DRIVER}-1" in versions
    assert not any(fr.DRIVER_NEWER in v for v in versions)  # the newer branch was available
    policy = h.ssh("apt-cache policy nvidia-open").stdout
    assert f"Candidate: {fr.DRIVER}-1" in policy and fr.DRIVER_NEWER in policy
    # The role rebooted the host: the module-load stand-in (installed by the run) ran at boot,
    # and the GPU health check after the reboot passed.
    assert re.search(r"Reboot to load the new driver\.\] \**\nchanged:", proc.stdout)
    assert runs["boots_after_first"].split() == ["boot"]
    assert re.search(r"Fail when the GPUs are not healthy after the reboot\.\] \**\nok:",
                     proc.stdout)


def test_packages_are_held(runs, host):
    held = set(host.hosts[0].ssh("apt-mark showhold").stdout.split())
    assert held >= HOLDS


def test_repository_is_trusted_through_its_own_keyring_only(runs, host, repos):
    h = host.hosts[0]
    source = h.ssh("cat /etc/apt/sources.list.d/vllama-nvidia-cuda.sources").stdout
    assert "Signed-By: /etc/apt/keyrings/vllama-nvidia-cuda.asc" in source
    assert repos.cuda in source and "trusted" not in source.lower()
    assert h.ssh("test -e /etc/apt/sources.list.d/cuda.list", check=False).returncode != 0
    pin = h.ssh("cat /etc/apt/preferences.d/vllama-nvidia-driver.pref").stdout
    assert "Pin: version 580.*" in pin and "Pin-Priority: 1000" in pin


def test_nouveau_blacklist_and_initramfs(runs, host):
    h = host.hosts[0]
    blacklist = h.ssh("cat /etc/modprobe.d/vllama-blacklist-nouveau.conf").stdout
    assert "blacklist nouveau" in blacklist and "options nouveau modeset=0" in blacklist
    calls = h.ssh(f"cat {fr.LOG_DIR}/initramfs.log").stdout.splitlines()
    # dpkg's trigger (activated by the DKMS package) and the role's rebuild after the blacklist.
    assert len(calls) >= 2 and all(c == "update-initramfs -u" for c in calls)
    postinst = h.ssh(f"cat {fr.LOG_DIR}/postinst.log").stdout
    assert "nvidia-kernel-open-dkms configure" in postinst
    assert f"dkms build -m nvidia -v {fr.DRIVER} -k {KERNEL}" in h.ssh(
        f"cat {fr.LOG_DIR}/dkms.log").stdout


def test_persistenced_is_enabled_and_runs_once_the_module_is_loaded(runs, host):
    h = host.hosts[0]
    assert h.ssh("systemctl is-enabled nvidia-persistenced").stdout.strip() == "enabled"
    assert h.ssh("systemctl is-active nvidia-persistenced").stdout.strip() == "active"


def test_second_run_changes_nothing_and_does_not_reboot(runs):
    proc = runs["second"]
    assert proc.returncode == 0, lt.explain(proc)
    assert lt.recap(proc.stdout)["changed"] == 0, proc.stdout[-4000:]
    assert runs["boots_after_second"] == runs["boots_after_first"]


def test_gpu_health_after_the_install(runs):
    health = runs["health"]["vllama_gpu_health"]
    assert health["applicable"] and health["healthy"], health
    assert {c["name"]: c["ok"] for c in health["checks"]} == {
        "nvml": True, "driver_library_match": True, "module_for_running_kernel": True}
    assert health["loaded_module_version"] == fr.DRIVER
    assert health["library_versions"] == [fr.DRIVER]
