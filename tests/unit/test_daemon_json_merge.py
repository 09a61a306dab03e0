"""The daemon.json merge of the container-toolkit role, in-process (a real dockerd reads the merged
file in tests/gpu/test_nvidia_local_docker_lab.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "vllama_docker_daemon_json_under_test",
    ROOT / "plugins/modules/vllama_docker_daemon_json.py")
assert spec is not None and spec.loader is not None
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
NVIDIA = {"nvidia": {"path": "nvidia-container-runtime", "args": []}}


def test_users_keys_survive_and_the_runtime_is_added(tmp_path):
    path = tmp_path / "daemon.json"
    user = {"bridge": "none", "log-opts": {"max-size": "10m"},
            "runtimes": {"crun": {"path": "/usr/bin/crun"}}}
    path.write_text(json.dumps(user))
    data, _raw = mod.read_config(str(path))
    merged, added = mod.merge(data, NVIDIA)
    assert added == ["nvidia"]
    assert merged == {**user, "runtimes": {**user["runtimes"], **NVIDIA}}
    assert data == user  # the input is not modified


def test_an_existing_nvidia_runtime_is_left_as_the_user_set_it(tmp_path):
    data = {"runtimes": {"nvidia": {"path": "/opt/custom/nvidia-container-runtime"}}}
    merged, added = mod.merge(data, NVIDIA)
    assert added == [] and merged == data


def test_absent_and_empty_files_start_from_nothing(tmp_path):
    assert mod.read_config(str(tmp_path / "missing.json")) == ({}, None)
    (tmp_path / "empty.json").write_text("\n")
    assert mod.read_config(str(tmp_path / "empty.json"))[0] == {}


@pytest.mark.parametrize(("text", "needle"), [
    ('{"bridge": "none",}', "not valid JSON (line 1"),
    ("[1, 2]", "must hold a JSON object, not list"),
    ('{"runtimes": []}', "'runtimes' must be an object"),
])
def test_a_broken_file_is_refused_and_never_replaced(tmp_path, text, needle):
    path = tmp_path / "daemon.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="left untouched") as info:
        mod.read_config(str(path))
    assert needle in str(info.value)
    assert path.read_text() == text


def test_atomic_write_keeps_the_mode(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text("{}")
    path.chmod(0o600)
    mod.write_atomic(str(path), '{"a": 1}\n', 0o600)
    assert json.loads(path.read_text()) == {"a": 1}
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["daemon.json"]
