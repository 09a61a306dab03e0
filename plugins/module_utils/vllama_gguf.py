"""GGUF headers and model dimensions, read with the standard library only.

Used on the hosts by the vllama_model_check and vllama_verify modules, and on the controller by
the planner (vllama_provision.modelmeta loads this file), so a model's dimension is read the
same way wherever the model is.
"""

from __future__ import annotations

import json
import os
import struct

GGUF_MAGIC = b"GGUF"
# GGUF value types: size in bytes for fixed-size scalars.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING = 8
_ARRAY = 9


class GGUFError(ValueError):
    pass


def _read(handle, fmt):
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise GGUFError("the file ends inside its header")
    return struct.unpack(fmt, data)[0]


def _string(handle):
    length = _read(handle, "<Q")
    if length > 1 << 26:
        raise GGUFError("a header string is implausibly long")
    data = handle.read(length)
    if len(data) != length:
        raise GGUFError("the file ends inside its header")
    return data.decode("utf-8", errors="replace")


def _value(handle, kind, keep):
    if kind in _SCALARS:
        return _read(handle, _SCALARS[kind])
    if kind == _STRING:
        return _string(handle)
    if kind == _ARRAY:
        item_kind = _read(handle, "<I")
        count = _read(handle, "<Q")
        items = [_value(handle, item_kind, False) for _index in range(count)]
        return items if keep else None
    raise GGUFError(f"unknown GGUF value type {kind}")


def read_gguf_header(path):
    """Parse the GGUF header's key/value section (tensor data is not read here)."""
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise GGUFError("not a GGUF file (bad magic)")
        version = _read(handle, "<I")
        if version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {version}")
        tensors = _read(handle, "<Q")
        count = _read(handle, "<Q")
        if count > 1 << 20:
            raise GGUFError("implausible number of header entries")
        meta = {}
        for _index in range(count):
            key = _string(handle)
            kind = _read(handle, "<I")
            meta[key] = _value(handle, kind, keep=False)
    arch = meta.get("general.architecture")
    if not arch:
        raise GGUFError("the header names no general.architecture")
    return {"version": version, "tensor_count": tensors, "architecture": arch,
            "context_length": meta.get(f"{arch}.context_length"),
            "embedding_length": meta.get(f"{arch}.embedding_length"),
            "pooling_type": meta.get(f"{arch}.pooling_type"),
            # What the KV cache's size follows (llama.cpp: K and V per layer, per token).
            "block_count": meta.get(f"{arch}.block_count"),
            "head_count": meta.get(f"{arch}.attention.head_count"),
            "head_count_kv": meta.get(f"{arch}.attention.head_count_kv"),
            "key_length": meta.get(f"{arch}.attention.key_length"),
            "value_length": meta.get(f"{arch}.attention.value_length"),
            "name": meta.get("general.name"),
            "chat_template": bool(meta.get("tokenizer.chat_template"))}


def embedding_dimension(path):
    """The length of the vectors a model returns: a GGUF's ``<arch>.embedding_length``, or a
    Hugging Face folder's ``hidden_size`` (the last Dense layer's ``out_features`` when a
    sentence-transformers model projects its pooled vector). 0 when it cannot be told."""
    try:
        if os.path.isdir(path):
            return _folder_dimension(path)
        with open(path, "rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                return 0
        return int(read_gguf_header(path).get("embedding_length") or 0)
    except (GGUFError, OSError, ValueError, TypeError, struct.error):
        return 0


def _folder_dimension(path):
    dims = 0
    try:
        with open(os.path.join(path, "modules.json"), encoding="utf-8") as handle:
            modules = json.load(handle)
    except (OSError, ValueError):
        modules = []
    for module in modules if isinstance(modules, list) else []:
        if str(module.get("type", "")).endswith("Dense"):
            with open(os.path.join(path, module.get("path", ""), "config.json"),
                      encoding="utf-8") as handle:
                dims = int(json.load(handle).get("out_features") or 0)
    if dims:
        return dims
    with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    text = config.get("text_config") or config
    return int(text.get("hidden_size") or text.get("d_model") or 0)
