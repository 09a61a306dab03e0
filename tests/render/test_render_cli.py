"""`render --validate` as a user runs it: the example fleet and the demo's inventory.

Before the validators had one dispatch (validators.VALIDATORS), `render --validate` called the
unit validator with a keyword it does not take and crashed with a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vllama_provision import validators

ROOT = Path(__file__).resolve().parents[2]


def _render(inventory: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllama_provision.cli", "render",
                           str(ROOT / inventory), "--out", str(out), "--validate"],
                          capture_output=True, text=True, check=False, cwd=ROOT)


@pytest.mark.parametrize(("inventory", "hosts"), [
    ("inventory/lab.yml", {"gpu-01": 2, "gpu-02": 4, "mac-studio": 4}),
    ("inventory/local.yml", {"default-1": 2}),
])
def test_render_validate_checks_every_file(tmp_path: Path, inventory: str,
                                           hosts: dict[str, int]) -> None:
    result = _render(inventory, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for host, count in hosts.items():
        assert f"{host}: {count} file(s) valid" in result.stdout + result.stderr
        # Beside them, in a monitored fleet, every Linux host's node exporter file, and on
        # NVIDIA hosts the DCGM exporter's unit, each validated as its own service.
        services = ("/etc/default/prometheus-node-exporter",
                    "/etc/systemd/system/vllama-dcgm-exporter.service")
        written = [p for p in (tmp_path / host).rglob("*")
                   if p.is_file() and not str(p).endswith(services)]
        assert len(written) == count, written
    if inventory == "inventory/lab.yml":
        for host in ("gpu-01", "gpu-02"):
            assert f"{host}: 1 dcgm exporter file(s) valid" in result.stdout + result.stderr
        assert not (tmp_path / "mac-studio" / services[1].lstrip("/")).exists()


def test_every_validator_the_planner_names_is_dispatched() -> None:
    assert set(validators.VALIDATORS) == {"systemd", "compose", "plist", "env", "haproxy",
                                          "promtool-rules", "promtool-web", "promtool-config",
                                          "systemd-dropin", "systemd-docker", "json",
                                          "newsyslog"}
    with pytest.raises(ValueError, match=r"unknown validator 'ini'.*known: compose, env"):
        validators.validate_file("ini", "", dest="/etc/x.ini")


def test_a_macs_release_file_and_log_rotation_are_checked() -> None:
    """engine.json (the launcher's words and environment) and newsyslog.conf(5) lines: each
    validator catches what would break the Mac's server or its rotation."""
    good = '{"argv": ["-m", "/m.gguf"], "env": {"A": "1"}}'
    assert validators.validate_file("json", good, dest="/x/engine.json") == []
    assert validators.validate_file("json", '{"argv": ["-m", 1], "env": {}}',
                                    dest="/x/engine.json") == ["argv must be a list of strings"]
    assert validators.validate_file("json", "{", dest="/x/engine.json")[0].startswith("not JSON")
    line = "/Library/Logs/vllama/a/stdout.log\troot:wheel\t640\t7\t10240\t*\tJN\n"
    assert validators.validate_file("newsyslog", "# c\n" + line, dest="/etc/n.conf") == []
    assert validators.validate_file("newsyslog", line.replace("640", "6x0").replace("JN", "JQ"),
                                    dest="/etc/n.conf") == [
        "line 1: mode 6x0 is not octal", "line 1: unknown flags Q"]
    assert validators.validate_file("newsyslog", "logs/a.log 640 7\n", dest="/etc/n.conf") == [
        "line 1: 3 fields; logfilename [owner:group] mode count size when flags"]


def test_validate_file_reports_a_broken_unit_without_an_instance() -> None:
    unit = "[Service]\nType=exec\nExecStart=/usr/bin/true\nProtectSystem=very\n"
    problems = validators.validate_file("systemd", unit, dest="/etc/systemd/system/x.service")
    assert problems == ["/etc/systemd/system/x.service:4: Failed to parse protect system value, "
                        "ignoring: very"]
    assert validators.validate_file("env", "A=1\n", dest="/x/engine.env") == [
        "VLLAMA_ENGINE_ARGS is not set"]
