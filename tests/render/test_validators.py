"""The validators themselves: each must reject what its tool rejects (or silently misreads).

Expectations for the systemd parsers come from systemd.exec(5) ("EnvironmentFile=") and
systemd.service(5) ("Command lines": an unquoted $VAR is split at white space, quotes respected
and removed), not from the port's own output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vllama_provision import validators

GOOD_UNIT = """[Unit]
Description=test

[Service]
Type=exec
ExecStart=/opt/engine/bin/python -m http.server
ProtectSystem=strict

[Install]
WantedBy=multi-user.target
"""


def test_systemd_tools_present() -> None:
    assert shutil.which("systemd-analyze"), "apt-get install systemd"
    assert validators.compose_binary().is_file()


def test_verify_unit_accepts_a_good_unit() -> None:
    assert validators.verify_systemd_unit(GOOD_UNIT, unit_name="t.service",
                                          host_executables=["/opt/engine/bin/python"]) == []


def test_verify_unit_reports_unknown_keys_although_systemd_exits_0() -> None:
    unit = GOOD_UNIT.replace("ProtectSystem=strict", "ProtectSytem=strict")
    problems = validators.verify_systemd_unit(unit, unit_name="t.service",
                                              host_executables=["/opt/engine/bin/python"])
    assert any("Unknown key" in p and "ProtectSytem" in p for p in problems), problems
    # Paths point at the unit's place on the host, not at the temporary root.
    assert all("vllama-unit-" not in p for p in problems)


def test_verify_unit_reports_bad_values() -> None:
    unit = GOOD_UNIT.replace("ProtectSystem=strict", "ProtectSystem=very")
    problems = validators.verify_systemd_unit(unit, unit_name="t.service",
                                              host_executables=["/opt/engine/bin/python"])
    assert problems == ["/etc/systemd/system/t.service:7: Failed to parse protect system value, "
                        "ignoring: very"]


def test_verify_unit_reports_a_program_nobody_provides() -> None:
    problems = validators.verify_systemd_unit(GOOD_UNIT, unit_name="t.service")
    assert any("/opt/engine/bin/python" in p and "not executable" in p for p in problems)


def test_verify_unit_from_a_file_and_in_a_given_root(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text(GOOD_UNIT.replace("/opt/engine/bin/python", "/bin/sh"), encoding="utf-8")
    assert validators.verify_systemd_unit(unit) == []
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system")
    assert validators.verify_systemd_unit(unit, root) == []
    assert validators.verify_systemd_unit(GOOD_UNIT, root, unit_name="y.service",
                                          host_executables=["/opt/engine/bin/python"]) == []
    # The unit and the stub program are removed afterwards.
    assert not (root / "etc/systemd/system/x.service").exists()
    assert not (root / "etc/systemd/system/y.service").exists()
    assert not (root / "opt/engine/bin/python").exists()


def test_security_exposure_orders_units() -> None:
    loose = validators.security_exposure(GOOD_UNIT, unit_name="t.service",
                                         host_executables=["/opt/engine/bin/python"])
    tight = validators.security_exposure(
        GOOD_UNIT.replace("ProtectSystem=strict", "ProtectSystem=strict\nDynamicUser=yes\n"
                          "PrivateNetwork=yes\nCapabilityBoundingSet=\nNoNewPrivileges=yes"),
        unit_name="t.service", host_executables=["/opt/engine/bin/python"])
    assert 0.0 <= tight < loose <= 10.0


def test_verify_compose() -> None:
    good = 'services:\n  engine:\n    image: "x:1"\n    command: ["a$$b"]\n'
    assert validators.verify_compose(good) == []
    assert any("additional properties 'bogus'" in p
               for p in validators.verify_compose(good + "    bogus: 1\n"))
    assert any('"Y" variable is not set' in p or "Y" in p
               for p in validators.verify_compose(good.replace("a$$b", "a$Y")))
    assert validators.verify_compose("services: [")[0].startswith("not valid YAML")


def test_verify_compose_creates_referenced_files() -> None:
    text = ('services:\n  engine:\n    image: "x:1"\n    env_file: ["/nonexistent/s.env"]\n'
            '    secrets: [{source: k, target: /run/secrets/k}]\n'
            'secrets:\n  k:\n    file: /nonexistent/k.key\n')
    assert validators.verify_compose(text) == []
    assert not Path("/nonexistent").exists()


PLIST = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
<key>Label</key><string>org.example.x</string>
<key>ProgramArguments</key><array><string>/usr/bin/true</string></array>
<key>UserName</key><string>x</string>
<key>RunAtLoad</key><true/>
<key>KeepAlive</key><true/>
<key>StandardOutPath</key><string>/tmp/o</string>
<key>StandardErrorPath</key><string>/tmp/e</string>
</dict></plist>
"""


def test_verify_plist() -> None:
    assert validators.verify_plist(PLIST) == []
    assert validators.verify_plist(PLIST.replace("<key>UserName</key><string>x</string>", "")
                                   ) == ["missing required key UserName"]
    assert validators.verify_plist(PLIST.replace("org.example.x", "a & b"))[0].startswith(
        "not a valid XML plist")
    assert "ProgramArguments[0]" in validators.verify_plist(
        PLIST.replace("/usr/bin/true", "true"))[0]
    assert validators.verify_plist(
        PLIST.replace("<key>RunAtLoad</key>", "<key>RunAtLoud</key>")) == [
        "missing required key RunAtLoad", "unexpected key RunAtLoud (typo?)"]


@pytest.mark.parametrize(("text", "expected"), [
    # systemd.exec(5), EnvironmentFile=: unquoted values follow POSIX shell backslash rules,
    # interior white space kept, leading/trailing white space dropped, quotes after the first
    # character kept.
    ("A=  x  y  \n", {"A": "x  y"}),
    ("A=a\\ b\\\\c\n", {"A": "a b\\c"}),
    ("A=x'y'\n", {"A": "x'y'"}),
    ("A=a\\\nb\n", {"A": "ab"}),
    # single quotes: verbatim, no escapes
    ("A='a \\ \"b\"'\n", {"A": 'a \\ "b"'}),
    # double quotes: \" \\ \` \$ unescaped, other backslashes kept, may span lines
    ('A="x \\" \\\\ \\` \\$ \\n"\n', {"A": 'x " \\ ` $ \\n'}),
    ('A="one\ntwo"\n', {"A": "one\ntwo"}),
    # comments and lines without "="
    ("# c\n; c\nnoequals\nB=1\n", {"B": "1"}),
    ("A=1\nA=2", {"A": "2"}),
])
def test_parse_env_file(text: str, expected: dict[str, str]) -> None:
    assert validators.parse_env_file(text)[0] == expected


def test_parse_env_file_warns_about_what_systemd_drops() -> None:
    env, warnings = validators.parse_env_file("1BAD=x\nGOOD=y\nCTRL=\"a\x01b\"\nnoequals\n")
    assert env == {"GOOD": "y"}
    assert len(warnings) == 3


@pytest.mark.parametrize(("value", "words"), [
    ("a b  c", ["a", "b", "c"]),
    ("'a b' \"c d\"", ["a b", "c d"]),
    ("a\\ b", ["a b"]),
    ("x'y'z", ["xyz"]),
    ("''", [""]),
    ("\\'", ["'"]),
    ("", []),
])
def test_split_exec_words(value: str, words: list[str]) -> None:
    assert validators.split_exec_words(value) == words


def test_verify_env_file_catches_a_word_that_does_not_round_trip() -> None:
    # A JSON argument written naively loses its quotes when systemd splits $VLLAMA_ENGINE_ARGS.
    text = 'VLLAMA_ENGINE_ARGS="--x {\\"a\\":1}"\n'
    problems = validators.verify_env_file(text, ["--x", '{"a":1}'])
    assert problems == ["argv word 1 reads back as '{a:1}', expected '{\"a\":1}'"]
    assert validators.verify_env_file("X=1\n", []) == ["VLLAMA_ENGINE_ARGS is not set"]
    assert validators.verify_env_file('VLLAMA_ENGINE_ARGS="a"\n', ["a"], {"B": "1"}) == [
        "B is missing"]
