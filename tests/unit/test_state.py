"""The converged check (vllama_state) on a host tree in a temporary folder: a converged tree has
no difference and needs no phase; each kind of drift is named and sends the right phases.

systemd is asked for the units' state with one `systemctl show`; the instance's unit does not
exist on this machine, so that one call is replaced by the answer a running, enabled unit gives
(the e2e tier checks the real one on lab hosts).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STATE = importlib.import_module(
    "ansible_collections.vllama.provision.plugins.module_utils.vllama_state")
LOCK = importlib.import_module(
    "ansible_collections.vllama.provision.plugins.plugin_utils.vllama_lock")
FILTERS = _load(ROOT / "plugins/filter/vllama.py", "vllama_filters_for_state")
UNIT = {"Id": "vllama-chat.service", "ActiveState": "active", "UnitFileState": "enabled",
        "NeedDaemonReload": "no"}


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(STATE, "_unit_properties", lambda units: {u: dict(UNIT) for u in units})
    install = tmp_path / "opt"
    release = install / "instances/chat/releases/r1"
    release.mkdir(parents=True)
    venv = install / "engines/e1"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").write_text("")
    models = tmp_path / "models/m/abc"
    models.mkdir(parents=True)
    model = models / "m.gguf"
    model.write_bytes(b"GGUF" * 100)
    state_root = tmp_path / "state"
    (state_root / "secrets").mkdir(parents=True)
    for name in ("chat.key", "chat.env"):
        (state_root / "secrets" / name).write_text("secret\n")
        os.chmod(state_root / "secrets" / name, 0o600)
    env = release / "engine.env"
    env.write_text("VLLAMA_ENGINE_ARGS=--port 1\n")
    os.chmod(env, 0o644)
    plan = {
        "install_root": str(install), "state_root": str(state_root),
        "models_root": str(tmp_path / "models"), "service_user": "root",
        "controller_keys": {"chat": True},
        "rendered": [{"instance": "chat", "dest": str(env), "mode": "0644",
                      "sha256": hashlib.sha256(env.read_bytes()).hexdigest()}],
        "instances": [{
            "name": "chat", "release": "r1", "deploy": "native", "server": "llama-cpp-python",
            "engine": "llamacpp", "engine_version": "1", "engine_package": "llama-cpp-python==1",
            "engine_key": "e1", "model": {"raw": "m"}, "served_name": "chat",
            "local_endpoint": "http://127.0.0.1:1", "readiness": {"path": "/health"},
            "argv": ["--port", "1"], "env": {},
            "paths": {"releases": str(release.parent), "engine_venv": str(venv),
                      "unit_name": "vllama-chat.service",
                      "key_file": str(state_root / "secrets/chat.key"),
                      "secret_env": str(state_root / "secrets/chat.env")}}]}
    sources = {"chat": {"model": {"store_path": str(model), "store_dir": str(models),
                                  "file_name": "m.gguf", "sha256": "abc", "files": []}}}
    desired = FILTERS.vllama_desired(plan, sources)
    (release / "manifest.json").write_text(json.dumps(desired["instances"][0]["manifest"]))
    (release / "created.json").write_text("{}")
    (release / "engine").symlink_to(venv)
    (release / "model").symlink_to(models)
    (release.parent.parent / "current").symlink_to(release)
    record = Path(FILTERS.vllama_identity_record(str(model), str(state_root)))
    record.parent.mkdir(parents=True)
    st = model.stat()
    record.write_text(json.dumps({"path": str(model),
                                  "files": {"": [st.st_size, st.st_mtime_ns, st.st_ino]}}))
    return {"desired": desired, "release": release, "env": env, "model": model,
            "state": state_root, "history": str(tmp_path / "history.json")}


def _compare(tree: dict[str, Any]) -> dict[str, Any]:
    return STATE.compare(tree["desired"], tree["history"])


def test_a_converged_host_needs_no_phase(tree: dict[str, Any]) -> None:
    result = _compare(tree)
    assert (result["differences"], result["phases"]) == ([], [])
    assert result["instances"]["chat"]["current"] == "r1"


@pytest.mark.parametrize(("drift", "needle", "phases"), [
    (lambda t: t["env"].write_text("VLLAMA_ENGINE_ARGS=--port 2\n"),
     "engine.env differs from its rendered content", ["configure", "run"]),
    (lambda t: os.chmod(t["env"], 0o600), "engine.env has mode 0600, not 0644",
     ["configure", "run"]),
    (lambda t: t["env"].unlink(), "engine.env is missing", ["configure", "run"]),
    (lambda t: os.chmod(t["state"] / "secrets/chat.key", 0o644), "others could read it",
     ["configure", "run"]),
    (lambda t: (t["state"] / "secrets/chat.env").unlink(), "the key file", ["configure", "run"]),
    (lambda t: (t["release"] / "manifest.json").write_text("{}"), "manifest.json differs",
     ["configure", "run"]),
    (lambda t: (t["release"] / "model").unlink(), "points to nothing", ["configure", "run"]),
    (lambda t: os.truncate(t["model"], 10), "changed since it was checked",
     ["install", "configure", "run"]),
    (lambda t: t["model"].unlink(), "is missing", ["install", "configure", "run"]),
    (lambda t: (t["release"].parent.parent / "current").unlink(), "current is nothing",
     ["run"]),
])
def test_each_drift_is_named_and_sends_its_phases(tree: dict[str, Any], drift: Any,
                                                  needle: str, phases: list[str]) -> None:
    drift(tree)
    result = _compare(tree)
    assert any(needle in d for d in result["differences"]), result["differences"]
    assert result["phases"] == phases


def test_unit_state_drift(tree: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(STATE, "_unit_properties", lambda units: {u: {
        **UNIT, "ActiveState": "failed", "UnitFileState": "disabled",
        "NeedDaemonReload": "yes"} for u in units})
    result = _compare(tree)
    assert result["differences"] == [
        "chat: vllama-chat.service is failed",
        "chat: vllama-chat.service is disabled, not enabled",
        "chat: systemd has not loaded the changed vllama-chat.service"]
    assert result["phases"] == ["run"]


def test_a_model_without_identity_record_is_checked_again(tree: dict[str, Any]) -> None:
    Path(tree["desired"]["instances"][0]["model"]["record"]).unlink()
    result = _compare(tree)
    assert result["models_to_check"] == ["chat"]
    assert result["phases"] == ["install", "configure", "run"]


@pytest.mark.parametrize(("key_file_text", "source"), [
    (None, "the controller's copy"), ("operator-chosen\n", "api_key_file")])
def test_a_key_file_holding_another_key_sends_configure(tree: dict[str, Any], tmp_path: Path,
                                                         key_file_text: str | None,
                                                         source: str) -> None:
    """The host's key is compared by content with the inventory's api_key_file (or, without
    one, the controller's copy) through a salted digest: the key itself never travels."""
    keys_dir = tmp_path / "controller-keys"
    keys_dir.mkdir()
    (keys_dir / "chat.key").write_text("secret\n")  # the copy matches the host: converged
    inst = {"name": "chat", "api_key_file": ""}
    if key_file_text is not None:
        (tmp_path / "mine.key").write_text(key_file_text)
        inst["api_key_file"] = str(tmp_path / "mine.key")
    digests = FILTERS.vllama_key_digests({"instances": [inst]}, str(keys_dir))
    assert "secret" not in json.dumps(digests) and "operator" not in json.dumps(digests)
    assert digests["keys"]["chat"]["source"] == source
    result = STATE.compare(tree["desired"], tree["history"], digests)
    if key_file_text is None:
        assert (result["differences"], result["phases"]) == ([], [])
        (tree["state"] / "secrets/chat.key").write_text("edited-on-the-host\n")
        result = STATE.compare(tree["desired"], tree["history"], digests)
    key = tree["state"] / "secrets/chat.key"
    assert result["differences"] == [f"chat: the key file {key} holds another key than {source}"]
    assert result["phases"] == ["configure", "run"]


def test_a_missing_api_key_file_is_named() -> None:
    with pytest.raises(Exception, match="chat: cannot read api_key_file /nonexistent/k"):
        FILTERS.vllama_key_digests({"instances": [{"name": "chat",
                                                   "api_key_file": "/nonexistent/k"}]}, "/x")


def test_restarts_follow_changed_files_keys_and_restaged_models() -> None:
    switches = [{"name": n, "restart": False} for n in ("a", "b", "c", "d")]
    rendered = [{"changed": True, "item": [{"name": "a"}, {"dest": "/x/engine.env"}]},
                {"changed": False, "item": [{"name": "b"}, {"dest": "/x/engine.env"}]}]
    keys = [{"changed": True, "item": {"name": "c"}}]
    assert [s["name"] for s in FILTERS.vllama_restarts(switches, rendered, keys, {}, ["d"])] == [
        "a", "c", "d"]


def _run_module(tmp_path: Path, args: dict[str, Any]) -> dict[str, Any]:
    """The vllama_state module run as Ansible runs it on a host (python FILE ARGS.json)."""
    argfile = tmp_path / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(ROOT / "plugins/modules/vllama_state.py"),
                           str(argfile)], capture_output=True, text=True, env=env, check=False,
                          timeout=60)
    return json.loads(proc.stdout)


def test_the_lock_is_taken_in_the_same_round_trip_and_nothing_compared_while_held(
        tree: dict[str, Any], tmp_path: Path) -> None:
    lock = tmp_path / "state/lock"
    mine = {"run_id": "run-1", "pid": 1}
    args = {"desired": tree["desired"], "history": tree["history"],
            "lock": {"path": str(lock), "owner": mine}}
    first = _run_module(tmp_path, args)
    assert first["acquired"] is True and "differences" in first, first
    assert json.loads(lock.read_text())["run_id"] == "run-1"
    other = _run_module(tmp_path, {**args, "lock": {"path": str(lock),
                                                    "owner": {"run_id": "run-2"}}})
    assert other["acquired"] is False and other["held_by"]["run_id"] == "run-1"
    assert "differences" not in other and "phases" not in other
    checking = _run_module(tmp_path, {**args, "lock": {"path": str(tmp_path / "free"),
                                                       "owner": mine, "check_mode": True}})
    assert checking["acquired"] is True and not (tmp_path / "free").exists()


def test_the_controller_waits_replaces_a_stale_lock_or_refuses() -> None:
    me = {"run_id": "me", "controller": "ctl", "boot_id": "b1", "pid": 10}
    calls: list[str] = []

    def held_by(holder: dict[str, Any]) -> Any:
        def execute(replace: str) -> dict[str, Any]:
            calls.append(replace)
            if replace == holder["run_id"]:
                return {"acquired": True}
            return {"acquired": False, "held_by": holder}
        return execute

    dead = {"run_id": "old", "controller": "ctl", "boot_id": "b1", "pid": 99}
    res = LOCK.take(held_by(dead), me, 0, False, lambda pid: False, sleep=0)
    assert res["acquired"] and res["stale_lock"] == dead and "its process 99 is gone" in res["msg"]
    assert calls == ["", "old"]
    rebooted = {**dead, "boot_id": "b0"}
    assert "rebooted" in LOCK.take(held_by(rebooted), me, 0, False, lambda pid: True,
                                   sleep=0)["msg"]
    live = {**dead, "pid": 11, "command": "apply", "started": "then"}
    refused = LOCK.take(held_by(live), me, 0, False, lambda pid: True, sleep=0)
    assert refused["failed"] and refused["vllama_refused"]
    assert "locked by run old (apply, pid 11 on ctl, since then)" in refused["msg"]
    elsewhere = {**live, "controller": "other"}
    assert LOCK.take(held_by(elsewhere), me, 0, False, lambda pid: False, sleep=0)["failed"]
    broken = LOCK.take(held_by(elsewhere), me, 0, True, lambda pid: False, sleep=0)
    assert broken["acquired"] and "broken on request" in broken["msg"]


def test_the_facts_are_gathered_first_and_compared_by_digest(tree: dict[str, Any],
                                                             tmp_path: Path) -> None:
    """The converged check's round trip: the module gathers the host's facts (this machine's)
    and compares their digest with the facts the controller planned from. Other facts: nothing
    is locked or compared. The same facts: locked, compared and, with release=always, unlocked
    again whatever differs."""
    facts_mu = importlib.import_module(
        "ansible_collections.vllama.provision.plugins.module_utils.vllama_host_facts")
    lock = tmp_path / "state/lock"
    args = {"desired": tree["desired"], "history": tree["history"],
            "lock": {"path": str(lock), "owner": {"run_id": "run-1", "pid": 1}},
            "release": "always", "facts": {"sysfs_root": str(tmp_path / "no-sysfs")},
            "facts_digest": "0" * 64}
    other = _run_module(tmp_path, args)
    assert other["facts_changed"] is True, other
    assert other["vllama_facts"]["platform"]["system"] == "Linux"
    assert "acquired" not in other and "differences" not in other and not lock.exists()
    # The digest is the same function on both sides (the controller imports module_utils).
    assert other["facts_digest"] == facts_mu.digest(other["vllama_facts"])
    same = _run_module(tmp_path, {**args, "facts_digest": other["facts_digest"]})
    assert "facts_changed" not in same, same
    # (Run as a separate process here, the units are asked of this machine's systemctl: they
    # differ, so phases run; what matters is that the lock is released all the same.)
    assert same["acquired"] is True and same["released"] is True and "phases" in same
    assert not lock.exists()
    kept = _run_module(tmp_path, {**args, "facts_digest": other["facts_digest"],
                                  "release": "unchanged"})
    assert kept["phases"] and kept["released"] is False and lock.exists()


def test_key_digests_are_kept_until_the_key_file_changes(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The slow digest is computed once per key file: the controller keeps it (0600, beside
    its key copies) with the file's identity and a random salt, and computes it again only when
    the file changes."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    (keys_dir / "chat.key").write_text("secret\n")
    computed: list[str] = []
    real = FILTERS.key_digest
    monkeypatch.setattr(FILTERS, "key_digest",
                        lambda key, salt: computed.append(key) or real(key, salt))
    plan = {"instances": [{"name": "chat", "api_key_file": ""}]}
    first = FILTERS.vllama_key_digests(plan, str(keys_dir))
    again = FILTERS.vllama_key_digests(plan, str(keys_dir))
    assert first == again and computed == ["secret\n"]
    cache = keys_dir / ".digests.json"
    assert cache.stat().st_mode & 0o777 == 0o600 and "secret" not in cache.read_text()
    (keys_dir / "chat.key").write_text("rotated\n")
    rotated = FILTERS.vllama_key_digests(plan, str(keys_dir))
    assert computed == ["secret\n", "rotated\n"]
    assert rotated["salt"] == first["salt"]
    assert rotated["keys"]["chat"]["digest"] == real("rotated\n", first["salt"])
