"""Every command and option the README shows exists, with that name, in the CLI.

The README is what a newcomer pastes: a renamed option or a command that moved must fail here,
not in their shell. Commands are read from the README's code blocks, its inline code and the
first column of its command table; each must resolve to a click command (lazy ones included),
and each `--option` written next to it must be one of that command's options.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from vllama_provision import cli

README = Path(__file__).resolve().parents[2] / "README.md"
TOOL = "vllama-provision"


def _table_commands(text: str) -> list[str]:
    """The first column of the command table: `plan INVENTORY [--diff] ...`."""
    section = text.split("## Commands", 1)[1].split("\n### ", 1)[0]
    found = []
    for line in section.splitlines():
        match = re.match(r"\|\s*`([^`]+)`", line)
        if match and not line.startswith("|---"):
            for part in re.findall(r"`([^`]+)`", re.split(r"(?<!\\)\|", line)[1]):
                found.append(f"{TOOL} {part}".replace("\\|", " "))
    return found


def readme_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    found = [line.strip() for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
             for line in block.replace("\\\n", " ").splitlines()]
    found += re.findall(r"`([^`]*\b" + TOOL + r" [^`]*)`", text)
    found += _table_commands(text)
    commands = []
    for line in found:
        for match in re.finditer(TOOL + r"( [^\"`)|\n]*)", line):
            commands.append((TOOL + match.group(1)).strip())
    return sorted(set(commands))


def resolve(words: list[str]) -> tuple[list[str], click.Command]:
    command: click.Command = cli.cli
    path: list[str] = []
    for word in words:
        if not isinstance(command, click.Group):
            break
        sub = command.get_command(click.Context(command), word)
        if sub is None:
            break
        path.append(word)
        command = sub
    return path, command


COMMANDS = readme_commands()


def test_the_readme_shows_commands() -> None:
    names = {resolve(shlex.split(c.replace("[", " ").replace("]", " "))[1:])[0][0]
             for c in COMMANDS if len(c.split()) > 1 and not c.split()[1].startswith("-")}
    assert {"apply", "plan", "render", "upgrade", "rollback", "status", "bundle", "key", "lab",
            "facts", "verify", "schema", "wheelhouse"} <= names, names


@pytest.mark.parametrize("line", COMMANDS)
def test_every_readme_command_and_option_exists(line: str) -> None:
    words = line.replace("[", " ").replace("]", " ").replace("\\|", " ").replace("|", " ")
    tokens = words.split()[1:]
    path, command = resolve(tokens)
    if tokens and not tokens[0].startswith("-"):
        assert path, f"README: `{line}`: {tokens[0]!r} is not a command"
    if isinstance(command, click.Group) and len(tokens) > len(path):
        following = tokens[len(path)]
        assert following.startswith("-") or following == "/", (
            f"README: `{line}`: {' '.join(path)} has no command {following!r}")
    known = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    known |= {"--help", "-h", "--version"}
    for token in tokens[len(path):]:
        option = token.split("=", 1)[0].rstrip(",.;:")
        if option.startswith("--"):
            assert option in known, (f"README: `{line}`: {' '.join(path)} has no {option} "
                                     f"(it has {', '.join(sorted(known))})")
