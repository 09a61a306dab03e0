"""Lab pieces that need no root: addresses, the image recipe, the inventory, option checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vllama_provision.errors import LabError, UsageError
from vllama_provision.lab import addresses, golden, inventory, labs, ssh
from vllama_provision.lab.state import HostState, LabState
from vllama_provision.lab.system import missing_capabilities


def test_default_lab_is_block_0_and_its_first_host_is_127_0_1_1() -> None:
    assert addresses.choose_block("default", {0, 1, 2}) == 0
    assert addresses.address(0, 1) == "127.0.1.1"
    assert addresses.address(0, 15) == "127.0.1.15"


def test_blocks_are_16_wide_inside_127_0_1_0_24() -> None:
    assert addresses.address(1, 1) == "127.0.1.17"
    assert addresses.address(15, 15) == "127.0.1.255"
    with pytest.raises(LabError):
        addresses.address(0, 16)
    with pytest.raises(LabError):
        addresses.address(16, 1)


def test_other_labs_take_the_lowest_free_block_and_freed_blocks_are_reused() -> None:
    assert addresses.choose_block("a", set()) == 1
    assert addresses.choose_block("b", {1, 2, 4}) == 3
    assert addresses.choose_block("c", {1, 2, 3, 4}) == 5
    with pytest.raises(LabError, match="no free address block"):
        addresses.choose_block("d", set(range(1, 16)))


def test_mirrors_come_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n")
    assert golden.machine_mirrors(tmp_path) == golden.Mirrors(
        "http://mirror.example/debian", "http://mirror.example/debian-security")


def test_mirrors_come_from_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://m.example/debian bookworm main contrib\n"
        "# deb http://other.example/debian bookworm main\n"
        "deb http://m.example/security bookworm-security main\n")
    assert golden.machine_mirrors(tmp_path) == golden.Mirrors(
        "http://m.example/debian", "http://m.example/security")
    assert golden.machine_mirrors(tmp_path / "none") == golden.Mirrors(
        golden.DEFAULT_MIRROR, golden.DEFAULT_SECURITY)


def test_recipe_hash_covers_suite_packages_certs_and_version() -> None:
    base = golden.Recipe("bookworm", ("a", "b"), golden.Mirrors("m", "s"), (("x.crt", "1"),))
    same = golden.Recipe("bookworm", ("b", "a"), golden.Mirrors("m", "s"), (("x.crt", "1"),))
    assert base.digest == same.digest
    others = [
        golden.Recipe("trixie", ("a", "b"), base.mirrors, base.ca_certs),
        golden.Recipe("bookworm", ("a", "b", "c"), base.mirrors, base.ca_certs),
        golden.Recipe("bookworm", ("a", "b"), base.mirrors, (("x.crt", "2"),)),
        golden.Recipe("bookworm", ("a", "b"), base.mirrors, base.ca_certs, version=999),
    ]
    assert len({base.digest, *(r.digest for r in others)}) == 5
    assert base.key.startswith("bookworm-")


def test_image_has_python3_venv_and_full_components() -> None:
    assert {"python3", "python3-venv", "python3-apt", "sudo", "openssh-server"} <= set(
        golden.PACKAGES)
    text = golden.sources_text(golden.Recipe("trixie", (), golden.Mirrors("M", "S"), ()))
    assert "Suites: trixie trixie-updates" in text and "Suites: trixie-security" in text
    assert text.count("Components: main contrib non-free non-free-firmware") == 2


def test_inventory_is_self_contained_per_host(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VLLAMA_STATE_DIR", str(tmp_path))
    state = LabState(name="demo", block=2, hosts=[
        HostState("demo-1", 1, "127.0.1.33", "bookworm", ["/g"], user="ops"),
        HostState("demo-2", 2, "127.0.1.34", "bookworm", ["/g"], isolated=True),
    ])
    doc = yaml.safe_load(inventory.render(state))
    h1, h2 = doc["all"]["hosts"]["demo-1"], doc["all"]["hosts"]["demo-2"]
    assert h1["ansible_host"] == "127.0.1.33" and h1["ansible_user"] == "root"
    assert h1["ansible_ssh_private_key_file"] == str(tmp_path / "labs/id_ed25519")
    assert h1["ansible_python_interpreter"] == "/usr/bin/python3"
    assert h1["vllama_lab_become_user"] == "ops" and "vllama_lab_become_user" not in h2
    for opt in ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null",
                "ControlMaster=auto", "ControlPersist=60s", "ControlPath="):
        assert opt in h1["ansible_ssh_common_args"]
    assert "ProxyCommand" not in h1["ansible_ssh_common_args"]
    assert h1["ansible_host_key_checking"] is False  # Mitogen ignores StrictHostKeyChecking=no
    assert ("ProxyCommand=" + str(tmp_path / "labs/demo/hosts/demo-2/proxy")
            in h2["ansible_ssh_common_args"])


def test_ssh_argv_without_control_master(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLLAMA_STATE_DIR", str(tmp_path))
    argv = ssh.ssh_argv("127.0.1.2", control=False)
    assert argv[-1] == "root@127.0.1.2"
    assert not any(a.startswith("Control") for a in argv)
    assert all(argv[i + 1] != "-o" for i, a in enumerate(argv[:-1]) if a == "-o")


@pytest.mark.parametrize("field,value", [
    ("lab", "Bad_Name"), ("lab", "-x"), ("count", 0), ("count", 16), ("user", "root"),
    ("user", "Not Valid"), ("models_size", "64 MB"), ("suite", "sid"),
])
def test_up_options_are_checked(field: str, value: object) -> None:
    with pytest.raises(UsageError):
        labs.UpOptions(**{field: value}).validate()  # type: ignore[arg-type]


def test_capability_check_names_what_is_missing() -> None:
    assert any("not root" in m for m in missing_capabilities(uid=1000))


def test_plugin_skips_loudly_or_fails_under_ci(monkeypatch) -> None:
    from vllama_provision.lab import pytest_plugin

    monkeypatch.setattr(pytest_plugin, "missing_capabilities",
                        lambda **_: ["running as uid 1000, not root"])
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"LAB HOSTS UNAVAILABLE.*not root"):
        pytest_plugin.require_lab()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        pytest_plugin.require_lab()
    monkeypatch.setattr(pytest_plugin, "missing_capabilities", lambda **_: [])
    pytest_plugin.require_lab()  # a capable machine runs the test
