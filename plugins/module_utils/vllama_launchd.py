"""What launchd and the power manager say about a Mac's services, parsed with the standard
library only.

``launchctl print <domain>/<label>`` tells whether an engine's LaunchDaemon or LaunchAgent runs
(``state``, ``pid``) and how its last run ended (``last exit code``); ``pmset -g`` tells whether
the Mac sleeps and restarts after a power loss. Checked on the controller against recorded real
outputs (tests/fixtures/macos, each with its public source). Like vllama_macos.py, every parser
takes the command's text, returns empty values for what the text does not tell and never raises.
"""

from __future__ import annotations

import re

# A line that opens a nested block: ``arguments = {``, ``"WatchPaths" => [``,
# ``com.apple.launchd.WatchPaths => {``; the job's own block opens with ``system/<label> = {``.
OPENER = re.compile(r"^(?P<key>.*?)\s*=>?\s*[{\[]$")
FIELD = re.compile(r"^(?P<key>[^=]+?)\s*=\s*(?P<value>.*)$")
LEADING_INT = re.compile(r"^-?\d+")


def indent_of(line):
    """Width of a line's leading whitespace, tabs counted as 8 columns."""
    raw = line.expandtabs(8)
    return len(raw) - len(raw.lstrip())


def leading_int(value):
    """'1' -> 1, '78: EX_CONFIG' -> 78, '(never exited)' or '' -> None."""
    match = LEADING_INT.match((value or "").strip())
    return int(match.group(0)) if match else None


def print_fields(text, strict=True):
    """(fields, arguments) of the job block of ``launchctl print``: the ``key = value`` lines of
    the job's own block (first value wins) and the lines of its ``arguments = {`` block.

    Nested blocks (``environment``, ``endpoints``, ``resource coalition``, ``event triggers``...)
    are skipped: their ``state = active`` or ``type = resource`` never reach the job's fields.
    A block closes at a ``}`` (or ``]``) line; inside ``arguments`` only a ``}`` indented like
    the opening line closes it, since launchd prints a multi-line argument raw (a shell script
    passed to ``sh -c`` may hold a ``}`` line of its own). Text without the
    ``<domain>/<label> = {`` header (a ``grep`` of the output) is read as the job block. Should
    no ``}`` line match the indentation of ``arguments = {`` (whitespace mangled in a copy), the
    text is read again with any ``}`` closing it.
    """
    fields = {}
    arguments = []
    stack = []  # (name, indent of the opening line) of each open block, outermost first
    for line in (text or "").splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        in_arguments = bool(stack) and stack[-1][0] == "arguments"
        if stripped in ("}", "]", "};"):
            if not stack:
                continue
            if in_arguments and (stripped != "}" or (strict and indent_of(line) != stack[-1][1])):
                arguments.append(stripped)
                continue
            stack.pop()
            continue
        if in_arguments:
            arguments.append(stripped)
            continue
        at_top = not stack or (len(stack) == 1 and stack[0][0] == "job")
        opener = OPENER.match(stripped)
        if opener:
            key = opener.group("key").strip()
            if not stack and "/" in key:
                stack.append(("job", indent_of(line)))
            elif at_top and key == "arguments":
                stack.append(("arguments", indent_of(line)))
            else:
                stack.append((key or "block", indent_of(line)))
            continue
        if not at_top:
            continue
        field = FIELD.match(stripped)
        if field:
            fields.setdefault(field.group("key").strip(), field.group("value").strip())
    if strict and stack and stack[-1][0] == "arguments":
        return print_fields(text, strict=False)
    return fields, arguments


def parse_print(text):
    """``launchctl print system/<label>`` (or ``gui/<uid>/<label>``) -> {'state', 'pid',
    'last_exit_code', 'path', 'program', 'arguments', 'runs'}.

    ``state`` is launchd's own word ('running', 'not running', 'spawn scheduled'...), '' when
    absent; ``pid`` is set only while a process runs; ``last_exit_code`` is None for
    '(never exited)' or when the line is missing, and the number of '78: EX_CONFIG'.
    """
    fields, arguments = print_fields(text)
    pid = leading_int(fields.get("pid", ""))
    runs = leading_int(fields.get("runs", ""))
    return {
        "state": fields.get("state", ""),
        "pid": pid if pid is not None and pid > 0 else None,
        "last_exit_code": leading_int(fields.get("last exit code", "")),
        "path": fields.get("path", ""),
        "program": fields.get("program", ""),
        "arguments": arguments,
        "runs": runs if runs is not None and runs >= 0 else None,
    }


PMSET_SETTING = re.compile(r"^(?P<key>\S.*?)\s+(?P<value>\S+)(?:\s+\(.*\))?$")


def parse_pmset(text):
    """``pmset -g`` -> {setting: value} as strings, e.g. {'sleep': '1', 'autorestart': '0',
    'hibernatefile': '/var/vm/sleepimage', 'Sleep On Power Button': '1'}.

    Settings are the indented lines under 'System-wide power settings:' and 'Currently in use:';
    the note pmset appends ('1 (sleep prevented by sharingd, coreaudiod)') is dropped. Headers and
    anything else are skipped; a setting given twice keeps its last value.
    """
    settings = {}
    for line in (text or "").splitlines():
        if not line[:1].isspace() or not line.strip():
            continue
        match = PMSET_SETTING.match(line.strip())
        if match:
            settings[match.group("key")] = match.group("value")
    return settings
