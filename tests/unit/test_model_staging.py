"""Staging a model folder on a host: the role's modules and filter, run as they run there.

The modules run as real Ansible modules (``python module.py ARGS.json``, the way Ansible runs a
module file on a host), on temporary folders standing in for a host's model store. The full
path (controller folder -> host store -> vLLM serving it) runs in the gpu tier.
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

from vllama_provision import paths
from vllama_provision.models import resolve_source

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "plugins/modules"

_spec = importlib.util.spec_from_file_location("vllama_filters",
                                               ROOT / "plugins/filter/vllama.py")
filters = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(filters)

FILES = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}',
         "model.safetensors": bytes(range(256)) * 32,
         "tokenizer/tokenizer.json": b'{"version": "1.0"}'}


def _module(name: str, tmp: Path, **args: Any) -> tuple[int, dict[str, Any]]:
    argfile = tmp / f"{name}-args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    # Its module_utils are importable as AnsiballZ makes them on a host.
    env = {**os.environ, "PYTHONPATH": str(paths.collections_dir())}
    proc = subprocess.run([sys.executable, str(LIBRARY / f"{name}.py"), str(argfile)],
                          capture_output=True, text=True, check=False, timeout=60, env=env)
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def controller_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "controller" / "tiny-hf"
    for rel, data in FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / ".git").mkdir()
    (folder / ".git" / "objects").write_bytes(b"not part of the model")
    return folder


def _copy(copies: list[dict[str, str]], dirs: list[str]) -> None:
    """What the role's file and copy tasks do with the filter's lists."""
    for folder in dirs:
        Path(folder).mkdir(parents=True, exist_ok=True)
    for item in copies:
        Path(item["dest"]).write_bytes(Path(item["src"]).read_bytes())


def test_a_folder_is_copied_checked_and_moved_into_the_store(tmp_path: Path,
                                                             controller_folder: Path) -> None:
    store = tmp_path / "host-store"
    source = resolve_source(str(controller_folder), "", "", str(store)).to_dict()
    sources = {"a": {"model": source}, "b": {"model": source}}
    Path(source["store_dir"]).mkdir(parents=True)

    rc, present = _module("vllama_model_present", tmp_path, sources=sources)
    assert rc == 0 and present["missing"] == ["a"]  # two instances, one content: one copy
    copies = filters.vllama_model_copies(sources, present["missing"])
    dirs = filters.vllama_model_copies(sources, present["missing"], "dirs")
    partial = f"{source['store_dir']}/.partial-tiny-hf"
    assert sorted(c["dest"] for c in copies) == sorted(f"{partial}/{r}" for r in FILES)
    assert dirs == [partial, f"{partial}/tokenizer"]
    _copy(copies, dirs)
    assert not (Path(partial) / ".git").exists(), "a hidden folder travelled to the host"

    rc, checked = _module("vllama_model_check", tmp_path, path=partial, files=source["files"],
                          remove_on_failure=True, into=source["store_path"])
    assert rc == 0, checked
    assert checked["changed"] and checked["files"] == 3
    final = Path(source["store_path"])
    assert {p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()} == set(FILES)
    assert not Path(partial).exists()
    rc, present = _module("vllama_model_present", tmp_path, sources=sources)
    assert present["missing"] == []

    # The final check of every run hashes every file: a file changed in place is refused.
    (final / "model.safetensors").write_bytes(b"\0" * len(FILES["model.safetensors"]))
    rc, refused = _module("vllama_model_check", tmp_path, path=str(final),
                          files=source["files"])
    assert rc == 1 and "model.safetensors: sha256 is" in refused["msg"]
    assert final.is_dir(), "the final check must never remove the store's copy"


@pytest.mark.parametrize("damage", ["corrupt", "missing", "truncated"])
def test_a_damaged_copy_is_refused_and_removed(tmp_path: Path, controller_folder: Path,
                                                damage: str) -> None:
    source = resolve_source(str(controller_folder), "", "", str(tmp_path / "s")).to_dict()
    partial = Path(source["store_dir"]) / ".partial-tiny-hf"
    sources = {"a": {"model": source}}
    _copy(filters.vllama_model_copies(sources, ["a"]),
          filters.vllama_model_copies(sources, ["a"], "dirs"))
    target = partial / "tokenizer/tokenizer.json"
    if damage == "corrupt":
        target.write_bytes(b'{"version": "6.6"}')
    elif damage == "missing":
        target.unlink()
    else:
        target.write_bytes(b"{")
    rc, refused = _module("vllama_model_check", tmp_path, path=str(partial),
                          files=source["files"], remove_on_failure=True,
                          into=source["store_path"])
    assert rc == 1 and "tokenizer/tokenizer.json" in refused["msg"]
    assert "the copy was removed" in refused["msg"]
    assert not partial.exists() and not Path(source["store_path"]).exists()


def test_a_snapshot_moves_into_an_existing_mount_point(tmp_path: Path,
                                                        controller_folder: Path) -> None:
    """A Hugging Face snapshot's final place is its store folder itself (on ZFS, the dataset's
    mount point, which exists before the copy): its files move in one by one."""
    files = [{"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
             for rel, data in FILES.items()]
    mount = tmp_path / "models/org--tiny/0123abcd"
    source = {"mode": "copy", "file_name": "", "store_dir": str(mount),
              "store_path": str(mount), "local_path": str(controller_folder), "files": files}
    sources = {"a": {"model": source}}
    mount.mkdir(parents=True)
    (mount / "config.json").write_bytes(FILES["config.json"])  # an interrupted earlier copy
    rc, present = _module("vllama_model_present", tmp_path, sources=sources)
    assert present["missing"] == ["a"]
    _copy(filters.vllama_model_copies(sources, ["a"]),
          filters.vllama_model_copies(sources, ["a"], "dirs"))
    rc, checked = _module("vllama_model_check", tmp_path, path=f"{mount}/.partial-snapshot",
                          files=files, remove_on_failure=True, into=str(mount))
    assert rc == 0, checked
    assert sorted(p.relative_to(mount).as_posix() for p in mount.rglob("*")
                  if p.is_file()) == sorted(FILES)
    assert not (mount / ".partial-snapshot").exists()
    assert _module("vllama_model_present", tmp_path, sources=sources)[1]["missing"] == []


def test_a_single_file_still_moves_by_rename(tmp_path: Path) -> None:
    data = b"GGUF-not-really"
    partial = tmp_path / ".partial-m.gguf"
    partial.write_bytes(data)
    rc, result = _module("vllama_model_check", tmp_path, path=str(partial),
                         sha256=hashlib.sha256(data).hexdigest(), into=str(tmp_path / "m.gguf"))
    assert rc == 0 and result["changed"]
    assert (tmp_path / "m.gguf").read_bytes() == data and not partial.exists()
