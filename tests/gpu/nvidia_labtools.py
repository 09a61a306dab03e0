"""Lab-host helpers of the NVIDIA role tests: files onto hosts, playbooks, recaps, cached debs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

from gpu import nvidia_fakerepo as fr
from vllama_provision import paths
from vllama_provision.lab.handle import LabHost
from vllama_provision.runner import ansible_env

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MOCK = ROOT / "tests/fixtures/mock_nvml/pynvml.py"
RECAP_RE = re.compile(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def put(host: LabHost, path: str, data: bytes | str, mode: str = "0644") -> None:
    """Write ``data`` to ``path`` on the host (folders created)."""
    raw = data.encode() if isinstance(data, str) else data
    cmd = f"mkdir -p \"$(dirname '{path}')\" && cat > '{path}' && chmod {mode} '{path}'"
    proc = subprocess.run([*host.ssh_argv(), cmd], input=raw, capture_output=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode()


def put_tree(host: LabHost, folder: Path, dest: str) -> None:
    """Copy a local folder's content to ``dest`` on the host (tar over ssh)."""
    tar = subprocess.run(["tar", "-C", str(folder), "-cf", "-", "."], capture_output=True,
                         check=True).stdout
    proc = subprocess.run([*host.ssh_argv(), f"mkdir -p '{dest}' && tar -C '{dest}' -xf -"],
                          input=tar, capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr.decode()


def fake_sysfs(host: LabHost, device_id: str = "0x2684") -> None:
    """An NVIDIA GPU (an RTX 4090 by default) on the host's fake PCI bus, and the mock NVML."""
    dev = f"{fr.FAKE_SYSFS}/bus/pci/devices/0000:01:00.0"
    host.ssh(f"rm -rf {fr.FAKE_SYSFS} && mkdir -p {dev} && echo 0x10de > {dev}/vendor && "
             f"echo {device_id} > {dev}/device && echo 0x030000 > {dev}/class")
    put(host, f"{fr.MOCK_DIR}/pynvml.py", MOCK.read_bytes())


def use_test_mirror(host: LabHost, repos: fr.Repos) -> None:
    """The host's only distribution source becomes the test mirror (an offline site's mirror)."""
    put(host, "/etc/apt/keyrings/vllama-test-mirror.asc", repos.key.armored)
    put(host, "/etc/apt/sources.list.d/debian.sources",
        f"Types: deb\nURIs: {repos.mirror}\nSuites: bookworm\nComponents: main\n"
        "Signed-By: /etc/apt/keyrings/vllama-test-mirror.asc\n")
    host.ssh("rm -f /etc/apt/sources.list && rm -rf /var/lib/apt/lists/* && apt-get update -q",
             timeout=300)


def drop_distribution_sources(host: LabHost) -> None:
    host.ssh("rm -f /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list && "
             "rm -rf /var/lib/apt/lists/* && apt-get update -q", timeout=300)


def role_vars(repos: fr.Repos) -> dict[str, object]:
    return {
        "vllama_facts_pynvml_path": fr.MOCK_DIR,
        "vllama_facts_sysfs_root": fr.FAKE_SYSFS,
        "vllama_nvidia_driver_repo_url": repos.cuda,
        "vllama_nvidia_driver_repo_key_url": repos.cuda + "testkey.pub",
        "vllama_nvidia_driver_repo_key_fingerprint": repos.key.fingerprint,
        "vllama_nvidia_container_toolkit_repo_url": repos.toolkit,
        "vllama_nvidia_container_toolkit_repo_key_url": f"{repos.url}/libnvidia-container/gpgkey",
        "vllama_nvidia_container_toolkit_repo_key_fingerprint": repos.key.fingerprint,
    }


PLAY = """---
- name: NVIDIA roles under test.
  hosts: all
  become: true
  gather_facts: true
  environment:
    VLLAMA_MOCK_NVML_SCENARIO: {scenario}
  roles:
    - role: vllama.provision.vllama_facts
{roles}
"""


def playbook_text(*roles: str) -> str:
    return PLAY.format(scenario=fr.SCENARIO,
                       roles="\n".join(f"    - role: vllama.provision.{r}" for r in roles))


def run_playbook(inventory: Path, play: Path, extra: dict[str, object], tmp: Path,
                 *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    extra_file = tmp / f"extra-{len(list(tmp.glob('extra-*')))}.json"
    extra_file.write_text(json.dumps(extra))
    env = {**os.environ, **ansible_env(), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "False"}
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(play),
                           "-e", f"@{extra_file}", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def recap(output: str) -> dict[str, int]:
    match = RECAP_RE.search(output.split("PLAY RECAP", 1)[-1])
    assert match, output[-3000:]
    ok, changed, unreachable, failed = (int(g) for g in match.groups())
    return {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed}


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-3000:]}"


# --- cached artefacts ---

def ansible_wheels() -> Path:
    """Wheels of this controller's ansible-core and its dependencies, for a lab host's venv."""
    version = metadata.version("ansible-core")
    folder = paths.cache_dir() / "gpu-tests" / f"ansible-core-{version}-cp311"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                    "-d", str(folder), f"ansible-core=={version}"], check=True, timeout=600)
    (folder / ".complete").write_text(version + "\n")
    return folder


def install_ansible(host: LabHost) -> str:
    """A venv with ansible-core on the host (from the controller's cached wheels, offline)."""
    put_tree(host, ansible_wheels(), "/opt/vllama-test/wheels")
    host.ssh("python3 -m venv /opt/vllama-test/ansible && /opt/vllama-test/ansible/bin/pip "
             "install --quiet --no-index --find-links /opt/vllama-test/wheels ansible-core",
             timeout=600)
    return "/opt/vllama-test/ansible/bin/ansible-playbook"


def copy_project(host: LabHost, dest: str = "/opt/vllama-test/src") -> None:
    """The roles (in the collection's layout, with its plugins) and the package's pure-Python
    decision modules, for a run on the host itself (ANSIBLE_COLLECTIONS_PATH=dest)."""
    import io

    buf = io.BytesIO()
    collection = "ansible_collections/vllama/provision"
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for part in ("galaxy.yml", "meta", "plugins", "roles/vllama_facts",
                     "roles/vllama_nvidia_driver", "roles/vllama_nvidia_container_toolkit"):
            tar.add(ROOT / part, arcname=f"{collection}/{part}",
                    filter=lambda t: None if "__pycache__" in t.name else t)
        for module in ("__init__.py", "nvidia.py", "engines.py"):
            tar.add(ROOT / "vllama_provision" / module, arcname=f"vllama_provision/{module}")
    proc = subprocess.run([*host.ssh_argv(), f"mkdir -p {dest} && tar -C {dest} -xf -"],
                          input=buf.getvalue(), capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()


DOCKER_PACKAGES = ["docker.io"]


def docker_debs_folder() -> Path:
    key = hashlib.sha256(json.dumps(["bookworm", DOCKER_PACKAGES]).encode()).hexdigest()[:12]
    return paths.cache_dir() / "debs" / f"docker-bookworm-{key}"


def install_docker(host: LabHost) -> None:
    """Debian's docker.io in the host: from the cached .debs, or from apt the first time
    (the .debs are then kept for the next runs)."""
    folder = docker_debs_folder()
    if (folder / ".complete").exists():
        put_tree(host, folder, "/opt/vllama-test/debs")
        host.ssh("cd /opt/vllama-test/debs && DEBIAN_FRONTEND=noninteractive "
                 "dpkg -i --force-confold *.deb >/dev/null", timeout=600)
        return
    host.ssh("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
             "--no-install-recommends --download-only " + " ".join(DOCKER_PACKAGES), timeout=900)
    tar = subprocess.run([*host.ssh_argv(), "cd /var/cache/apt/archives && tar -cf - *.deb"],
                         capture_output=True, timeout=300, check=True)
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-C", str(folder), "-xf", "-"], input=tar.stdout, check=True)
    (folder / ".complete").write_text("\n".join(DOCKER_PACKAGES) + "\n")
    host.ssh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
             + " ".join(DOCKER_PACKAGES) + " >/dev/null", timeout=900)


def run_module(inventory: Path, module: str, args: dict[str, object], tmp: Path,
               env: dict[str, str] | None = None) -> dict:
    """Run one module of the vllama_facts role on the lab hosts through ansible-playbook; the
    first host's result (module return values)."""
    n = len(list(tmp.glob("module-*.yml")))
    play = tmp / f"module-{module}-{n}.yml"
    result_file = tmp / f"module-{module}-{n}.json"
    tasks = [{"name": f"Run {module}.", f"vllama.provision.{module}": args, "register": "result"},
             {"name": "Keep the result on the controller.", "delegate_to": "localhost",
              "ansible.builtin.copy": {"content": "{{ result | to_json }}",
                                       "dest": str(result_file), "mode": "0600"}}]
    play.write_text(json.dumps([{"name": "Module under test.", "hosts": "all",
                                 "gather_facts": False, "environment": env or {},
                                 "tasks": tasks}]))
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(play)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, **ansible_env(),
             "ANSIBLE_HOST_KEY_CHECKING": "False"})
    assert proc.returncode == 0, explain(proc)
    return json.loads(result_file.read_text())


def facts_with_mock(lab, tmp: Path, scenario: str, sysfs_root: str = fr.FAKE_SYSFS) -> dict:
    result = run_module(lab.inventory_path, "vllama_host_facts",
                        {"pynvml_path": fr.MOCK_DIR, "sysfs_root": sysfs_root}, tmp,
                        env={"VLLAMA_MOCK_NVML_SCENARIO": scenario})
    return result["vllama_facts"]
