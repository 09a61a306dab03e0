"""Releases without hosts: version order, downgrades, batches, the role's release filters, the
host module's switch/record/prune on a real folder tree, and the inventory edit of upgrade."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from vllama_provision.errors import UsageError
from vllama_provision.inventory_edit import set_engine_version
from vllama_provision.releases import batches, downgrades, newer, parse_batch

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILTERS = _load(ROOT / "plugins/filter/vllama.py", "vllama_filters")
MODULE = _load(ROOT / "plugins/modules/vllama_release.py", "vllama_release_module")


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("0.3.37", "0.3.36", True), ("0.3.36", "0.3.37", False), ("0.3.36", "0.3.36", False),
    ("0.3.36+vllamatest1", "0.3.36", True), ("0.10.0", "0.9.2", True),
    ("1.0.0rc1", "1.0.0", False), ("not-a-version", "0.3.36", False)])
def test_engine_versions_compare_by_pep440(a: str, b: str, expected: bool) -> None:
    assert newer(a, b) is expected


def _inst(name: str = "chat", engine: str = "llamacpp", version: str = "0.3.36",
          release: str = "r-new") -> dict[str, Any]:
    return {"name": name, "engine": engine, "engine_version": version, "release": release,
            "served_name": "planned-name", "paths": {"unit_name": f"vllama-{name}.service",
                      "current": f"/opt/vllama/instances/{name}/current"}}


def _state(current: str, versions: dict[str, str], previous: str = "",
           pending: dict[str, str] | None = None, engine: str = "llamacpp",
           **extra: Any) -> dict[str, Any]:
    return {"current": current, "previous": previous, "pending": pending,
            "releases": [{"id": rid, "engine": engine, "engine_version": v, "prepared": True,
                          "served_name": f"served-{rid}", "local_endpoint": f"http://{rid}",
                          "readiness": {"path": "/v1/models"}}
                         for rid, v in versions.items()], **extra}


def test_a_planned_older_engine_is_a_downgrade_with_both_versions() -> None:
    found = downgrades([_inst(version="0.3.36")],
                       {"chat": _state("r-cur", {"r-cur": "0.3.37"})})
    assert found == ["chat: runs llamacpp 0.3.37, the inventory asks for 0.3.36"]


@pytest.mark.parametrize(("running", "engine"), [("0.3.36", "llamacpp"), ("0.3.35", "llamacpp"),
                                                 ("0.33.0", "vllm")])
def test_same_newer_or_other_engine_is_no_downgrade(running: str, engine: str) -> None:
    state = _state("r-cur", {"r-cur": running}, engine=engine)
    assert downgrades([_inst(version="0.3.36")], {"chat": state}) == []


def test_a_host_without_releases_has_no_downgrade() -> None:
    assert downgrades([_inst()], {"chat": _state("", {})}) == []
    assert downgrades([_inst()], {}) == []


@pytest.mark.parametrize(("spec", "hosts", "expected"), [
    (None, 3, [[0], [1], [2]]), ("2", 3, [[0, 1], [2]]), ("100%", 3, [[0, 1, 2]]),
    ("50%", 4, [[0, 1], [2, 3]]), ("34%", 3, [[0, 1], [2]]), ("1%", 3, [[0], [1], [2]]),
    ("10", 3, [[0, 1, 2]])])
def test_batches_split_hosts_in_order(spec: str | None, hosts: int,
                                      expected: list[list[int]]) -> None:
    names = [f"h{i}" for i in range(hosts)]
    assert batches(names, spec) == [[names[i] for i in group] for group in expected]


@pytest.mark.parametrize("spec", ["0", "-1", "0%", "101%", "x", "1.5", "%"])
def test_a_bad_batch_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError, match="--batch"):
        parse_batch(spec)


def test_switches_from_the_current_release() -> None:
    [sw] = FILTERS.vllama_switches([_inst()], {"chat": _state("r-old", {"r-old": "0.3.35"})})
    assert (sw["old"], sw["new"], sw["switch"], sw["attempt"], sw["restart"]) == (
        "r-old", "r-new", True, True, True)
    [same] = FILTERS.vllama_switches([_inst(release="r-old")],
                                     {"chat": _state("r-old", {"r-old": "0.3.35"})})
    assert (same["switch"], same["attempt"], same["restart"]) == (False, False, False)


def test_an_unfinished_switch_is_finished_and_falls_back_to_where_it_came_from() -> None:
    state = _state("r-new", {"r-old": "1", "r-new": "2"},
                   pending={"from": "r-old", "to": "r-new"})
    [sw] = FILTERS.vllama_switches([_inst()], {"chat": state})
    assert (sw["old"], sw["switch"], sw["attempt"], sw["restart"]) == (
        "r-old", False, True, True)


def test_an_engine_started_before_the_switch_is_restarted() -> None:
    state = _state("r-new", {"r-new": "2"}, stale=True)
    [sw] = FILTERS.vllama_switches([_inst()], {"chat": state})
    assert (sw["attempt"], sw["restart"]) == (False, True)
    assert FILTERS.vllama_restarts([sw], []) == [sw]


def test_rollback_targets_previous_or_a_unique_prefix() -> None:
    state = _state("r-b2", {"r-a1": "1", "r-b2": "2", "r-b3": "3"}, previous="r-a1")
    assert FILTERS.vllama_rollback_targets([_inst()], {"chat": state}) == {"chat": "r-a1"}
    assert FILTERS.vllama_rollback_targets([_inst()], {"chat": state}, "r-b3") == {
        "chat": "r-b3"}
    assert FILTERS.vllama_rollback_targets([_inst()], {"chat": state}, "3") == {"chat": "r-b3"}
    with pytest.raises(Exception, match="more than one release matches 'r-b'"):
        FILTERS.vllama_rollback_targets([_inst()], {"chat": state}, "r-b")
    with pytest.raises(Exception, match="no previous release"):
        FILTERS.vllama_rollback_targets([_inst()], {"chat": _state("r-b2", {"r-b2": "2"})})


def test_verification_follows_the_release_that_will_serve() -> None:
    state = _state("r-new", {"r-old": "1", "r-new": "2"}, previous="r-old")
    targets = {"chat": "r-old"}
    switches = FILTERS.vllama_switches([_inst()], {"chat": state}, targets)
    [inst] = FILTERS.vllama_verify_instances([_inst()], switches, {"chat": state})
    assert (inst["release"], inst["served_name"]) == ("r-old", "served-r-old")
    [back] = FILTERS.vllama_verify_instances([_inst()], switches, {"chat": state}, True)
    assert (back["release"], back["served_name"]) == ("r-new", "planned-name")


# ------------------------------------------------------------- the host module, on disk ---


def _release(root: Path, name: str, rid: str, created: str, engine: Path,
             model: Path) -> None:
    folder = root / "instances" / name / "releases" / rid
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"engine": "llamacpp",
                                                      "engine_version": rid}))
    (folder / "created.json").write_text(json.dumps({"created": created}))
    (folder / "engine").symlink_to(engine)
    (folder / "model").symlink_to(model)


def _params(root: Path, **extra: Any) -> dict[str, Any]:
    return {"install_root": str(root / "opt"), "models_root": str(root / "models"),
            "history": str(root / "state/history.json"), "instances": None, "units": None,
            "keep": 1, "history_limit": 1000, "records": None, "previous": None,
            "probe": False, "key_dir": None, "lock": None, "report": False, "keep_aside": [],
            **extra}


@pytest.fixture
def host_tree(tmp_path: Path) -> Path:
    opt, models = tmp_path / "opt", tmp_path / "models"
    for version in ("1", "2", "3", "4"):
        (opt / "engines" / f"llamacpp-{version}").mkdir(parents=True)
        (opt / "engines" / f"llamacpp-{version}" / "lib.so").write_bytes(b"x" * 1000)
        store = models / "smollm2" / (version * 64)
        store.mkdir(parents=True)
        (store / "model.gguf").write_bytes(b"m" * 500)
    (models / "operator-own-folder").mkdir()
    (models / "smollm2" / "notes").mkdir()  # not a content key: never collected
    for index, version in enumerate(("1", "2", "3", "4")):
        _release(opt, "chat", f"r{version}", f"2026-01-0{index + 1}T00:00:00Z",
                 opt / "engines" / f"llamacpp-{version}", models / "smollm2" / (version * 64))
    (models / "smollm2" / ("4" * 64) / ".partial-model.gguf").write_bytes(b"p")
    return tmp_path


def test_switch_moves_current_and_previous_and_records_it(host_tree: Path) -> None:
    params = _params(host_tree, name="chat", release="r2",
                     records=[{"event": "switched", "instance": "chat", "to": "r2"}])
    assert MODULE.switch({**params, "release": "r1", "records": None})["changed"]
    result = MODULE.switch(params)
    base = host_tree / "opt/instances/chat"
    assert result == {"changed": True, "old": "r1"}
    assert os.readlink(base / "current") == "releases/r2"
    assert os.readlink(base / "previous") == "releases/r1"
    history = json.loads((host_tree / "state/history.json").read_text())
    assert history[-1]["event"] == "switched" and history[-1]["time"]
    assert MODULE.switch(params)["changed"] is False
    with pytest.raises(ValueError, match="not prepared"):
        MODULE.switch({**params, "release": "r9"})


def test_inspect_reports_an_unfinished_switch(host_tree: Path) -> None:
    params = _params(host_tree, name="chat", release="r3",
                     records=[{"event": "switched", "instance": "chat", "from": "r2",
                               "to": "r3"}])
    MODULE.switch(params)
    state = MODULE.inspect(params)["instances"]["chat"]
    assert state["current"] == "r3" and state["pending"]["from"] == "r2"
    assert [r["id"] for r in state["releases"]] == ["r1", "r2", "r3", "r4"]
    MODULE.record({**params, "records": [{"event": "verified", "instance": "chat"}]})
    assert MODULE.inspect(params)["instances"]["chat"]["pending"] is None


def test_prune_keeps_current_previous_and_the_newest_and_frees_the_rest(
        host_tree: Path) -> None:
    base = _params(host_tree, name="chat", release="r1")
    MODULE.switch(base)
    MODULE.switch({**base, "release": "r2"})  # current r2, previous r1; r4 newest, r3 older
    dry = MODULE.prune(_params(host_tree), check=True)
    assert dry["removed"] and (host_tree / "opt/instances/chat/releases/r3").is_dir()
    result = MODULE.prune(_params(host_tree), check=False)
    kept = sorted(p.name for p in (host_tree / "opt/instances/chat/releases").iterdir())
    assert kept == ["r1", "r2", "r4"]
    engines = sorted(p.name for p in (host_tree / "opt/engines").iterdir())
    assert engines == ["llamacpp-1", "llamacpp-2", "llamacpp-4"]
    stores = sorted(p.name[:1] for p in (host_tree / "models/smollm2").iterdir()
                    if len(p.name) == 64)
    assert stores == ["1", "2", "4"]
    assert (host_tree / "models/operator-own-folder").is_dir()
    assert (host_tree / "models/smollm2/notes").is_dir()
    assert not (host_tree / "models/smollm2" / ("4" * 64) / ".partial-model.gguf").exists()
    assert result["freed_bytes"] >= 1000 + 500
    assert MODULE.prune(_params(host_tree), check=False)["removed"] == []


def test_prune_collects_damaged_copies_except_this_runs(host_tree: Path) -> None:
    """A copy moved aside as damaged stays through the run that moved it (for inspection) and is
    collected by a later run's prune, even inside a store folder a release still uses."""
    base = _params(host_tree, name="chat", release="r1")
    MODULE.switch(base)
    MODULE.switch({**base, "release": "r2"})
    store = host_tree / "models/smollm2" / ("2" * 64)
    older = store / ".damaged-model.gguf-20261201T000000"
    now = store / ".damaged-model.gguf-20261207T010203"
    for aside in (older, now):
        aside.write_bytes(b"d" * 300)
    result = MODULE.prune(_params(host_tree, keep_aside=[str(now)]), check=False)
    assert str(older) in result["removed"] and not older.exists()
    assert now.exists() and (store / "model.gguf").exists()
    assert str(now) in MODULE.prune(_params(host_tree), check=False)["removed"]
    assert not now.exists() and (store / "model.gguf").exists()
    # A folder model's damaged copy sits beside its store folder, in the model's own folder.
    folder_aside = host_tree / "models/smollm2" / (".damaged-" + "2" * 40 + "-20261201T000000")
    (folder_aside / "weights").mkdir(parents=True)
    assert str(folder_aside) in MODULE.prune(_params(host_tree), check=False)["removed"]
    assert (host_tree / "models/smollm2/notes").is_dir()


def test_prune_never_removes_the_releases_of_an_unfinished_switch(host_tree: Path) -> None:
    base = _params(host_tree, name="chat", release="r4")
    MODULE.switch(base)
    MODULE.record({**base, "records": [{"event": "switched", "instance": "chat",
                                        "from": "r1", "to": "r4"}]})
    MODULE.prune(_params(host_tree, keep=0), check=False)
    kept = sorted(p.name for p in (host_tree / "opt/instances/chat/releases").iterdir())
    assert kept == ["r1", "r4"]


def test_a_stale_engine_is_detected_from_its_start_time(host_tree: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    MODULE.switch(_params(host_tree, name="chat", release="r1"))
    from ansible_collections.vllama.provision.plugins.module_utils import vllama_releases

    monkeypatch.setattr(vllama_releases, "service_state", lambda unit: {
        "active": "active", "need_reload": False, "started": time.time() - 3600})
    assert MODULE.inspect(_params(host_tree))["instances"]["chat"]["stale"] is True
    monkeypatch.setattr(vllama_releases, "service_state", lambda unit: {
        "active": "active", "need_reload": False, "started": time.time() + 1})
    assert MODULE.inspect(_params(host_tree))["instances"]["chat"]["stale"] is False


# ------------------------------------------------------------------- inventory edit ---


def test_write_inventory_sets_the_version_and_keeps_comments(tmp_path: Path) -> None:
    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        "# the lab fleet\n"
        "all:\n"
        "  hosts:\n"
        "    gpu-01:  # the big one\n"
        "      vllama_instances:\n"
        "        - name: chat\n"
        "          model: /srv/m.gguf   # staged from here\n"
        "          engine_version: '0.3.36'\n"
        "        - name: other\n"
        "          engine: vllm\n"
        "          model: /srv/x\n"
        "  children:\n"
        "    cpu:\n"
        "      vars:\n"
        "        vllama_instances:\n"
        "          - {name: chat, model: /srv/m.gguf}\n")
    edited, missing = set_engine_version(inventory, ["chat", "ghost"], "llamacpp", "0.3.37")
    text = inventory.read_text()
    assert len(edited) == 2 and missing == ["ghost"]
    assert "# the lab fleet" in text and "# the big one" in text and "# staged from here" in text
    assert text.count("0.3.37") == 2 and "0.3.36" not in text
    assert "engine: vllm" in text and text.count("engine_version") == 2


def test_engine_space_counts_each_native_venv_once_from_its_wheels(tmp_path: Path) -> None:
    wheel = tmp_path / "engine.whl"
    wheel.write_bytes(b"w" * 1000)
    a, b = _inst("a"), _inst("b")
    for inst in (a, b):
        inst["deploy"] = "native"
        inst["paths"]["engine_venv"] = "/opt/vllama/engines/llamacpp-x"
    sources = {"a": {"wheel": {"wheels": [str(wheel)]}}, "b": {"wheel": {"wheels": [str(wheel)]}}}
    assert FILTERS.vllama_engine_space([a, b], sources) == [
        {"path": "/opt/vllama/engines/llamacpp-x", "size": 1000 * FILTERS.ENGINE_EXPANSION}]
    container = {**_inst("c"), "deploy": "container"}
    assert FILTERS.vllama_engine_space([container], {"c": sources["a"]}) == []
