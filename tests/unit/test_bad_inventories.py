"""Malformed inventories are refused by the real CLI, before any host is contacted.

Each file in tests/fixtures/bad-inventories/ is run through ``python -m vllama_provision.cli
plan FILE`` (and ``apply FILE`` for a few) as a subprocess, exactly as an operator would. What
the error must say is written down per file in ``cases.yml``: one stderr line must name, together,
the file, the host, the instance, the variable, the bad value, what is allowed and, for misspelt
keys, a did-you-mean. Every case must exit 2, print no traceback and nothing on stdout.

The subprocesses are started once, concurrently (each one pays Ansible's import time), and the
parametrized tests below assert on their recorded results.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "fixtures" / "bad-inventories"
CASES: list[dict] = yaml.safe_load((BAD / "cases.yml").read_text(encoding="utf-8"))
NOT_CONTACTED = "no host was contacted"


@dataclass
class Run:
    argv: list[str]
    file: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    state_dir: Path


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "VLLAMA_"))}
    env.update(PYTHONPATH=str(ROOT), VLLAMA_STATE_DIR=str(state / "state"),
               VLLAMA_CACHE_DIR=str(state / "cache"), NO_COLOR="1")
    return env


def run_cli(args: list[str], file: Path, state: Path) -> Run:
    state.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "vllama_provision.cli", *args]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(state), cwd=state,
                          timeout=120, check=False)
    return Run(argv, file, proc.returncode, proc.stdout, proc.stderr,
               time.monotonic() - start, state / "state")


def _materialise(case: dict, workdir: Path) -> tuple[Path, dict]:
    """The inventory path to run and the case with placeholders filled in."""
    source = BAD / case["file"]
    text = source.read_text(encoding="utf-8")
    if "@KEYDIR@" not in text:
        return source, case
    keydir = workdir / "keys"
    keydir.mkdir(parents=True, exist_ok=True)
    key = keydir / "qwen.key"
    key.write_text("sk-test-not-a-real-key\n", encoding="utf-8")
    key.chmod(0o644)
    target = workdir / case["file"]
    target.write_text(text.replace("@KEYDIR@", str(keydir)), encoding="utf-8")
    filled = {k: v.replace("@KEYDIR@", str(keydir)) if isinstance(v, str) else v
              for k, v in case.items()}
    return target, filled


def _case_id(case: dict, command: str) -> str:
    return f"{command}:{case['file']}"


PAIRS = [(case, command) for case in CASES for command in case.get("commands", ["plan"])]
WORLD_READABLE = next(c for c in CASES if c["file"] == "api-key-file-world-readable.yml")


def _private_key_inventory(work: Path) -> Path:
    path, _ = _materialise(WORLD_READABLE, work)
    (work / "keys" / "qwen.key").chmod(0o600)
    return path


# Runs the tests below need besides the cases: (key, arguments after the command, file).
EXTRA = {
    "good": lambda work: (["plan", str(BAD / "good.yml")], BAD / "good.yml"),
    "private-key": lambda work: (["plan", str(_private_key_inventory(work))],
                                 work / WORLD_READABLE["file"]),
    "many": lambda work: (["plan", str(BAD / "many-problems.yml")], BAD / "many-problems.yml"),
    "limit:plan": lambda work: (["plan", str(BAD / "good.yml"), "--limit", "gpu-99"],
                                BAD / "good.yml"),
    "limit:apply": lambda work: (["apply", str(BAD / "good.yml"), "--limit", "gpu-99"],
                                 BAD / "good.yml"),
    "missing": lambda work: (["plan", str(work / "no-such-inventory.yml")],
                             work / "no-such-inventory.yml"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Run, dict]]:
    """Every run of this module, started concurrently once."""
    base = tmp_path_factory.mktemp("bad-inventories")
    jobs = {}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for index, (case, command) in enumerate(PAIRS):
            work = base / f"{index:03d}"
            path, filled = _materialise(case, work)
            future = pool.submit(run_cli, [command, str(path)], path, work)
            jobs[_case_id(case, command)] = (future, filled)
        for key, build in EXTRA.items():
            work = base / key.replace(":", "-")
            work.mkdir()
            args, path = build(work)
            jobs[key] = (pool.submit(run_cli, args, path, work), {})
        return {key: (future.result(), filled) for key, (future, filled) in jobs.items()}


def _expected_pieces(case: dict, file: Path) -> list[str]:
    pieces = [case["where"].replace(case["file"], str(file)) if "where" in case else str(file)]
    if "host" in case:
        pieces.append(f"host {case['host']}")
    if "instance" in case:
        pieces.append(f"instance {case['instance']}")
    if "variable" in case:
        pieces.append(f"{case['variable']}:")
    pieces.append(case["message"])
    if "got" in case:
        pieces.append(f"(got {case['got']})")
    if "allowed" in case:
        pieces.append("allowed: ")
        pieces.append(case["allowed"])
    if "suggestion" in case:
        pieces.append(f"did you mean '{case['suggestion']}'?")
    return pieces


def _assert_refused(run: Run) -> None:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    assert run.stdout == "", f"nothing may be printed as a result: {run.stdout!r}"


@pytest.mark.parametrize(("case", "command"), PAIRS,
                         ids=[_case_id(c, cmd) for c, cmd in PAIRS])
def test_refused_with_a_precise_message(results, case: dict, command: str) -> None:
    run, filled = results[_case_id(case, command)]
    _assert_refused(run)
    pieces = _expected_pieces(filled, run.file)
    lines = [line for line in run.stderr.splitlines() if all(p in line for p in pieces)]
    assert lines, ("no single stderr line contains all of:\n  " + "\n  ".join(pieces)
                   + f"\nstderr was:\n{run.stderr}")
    if not case.get("usage"):
        assert NOT_CONTACTED in run.stderr
        # Where comes first (file, host, instance, variable), then what is wrong.
        line = lines[0]
        assert line.index(str(run.file)) < line.index(filled["message"])


@pytest.mark.parametrize(("case", "command"), [p for p in PAIRS if p[1] == "apply"],
                         ids=[_case_id(c, cmd) for c, cmd in PAIRS if cmd == "apply"])
def test_apply_refuses_before_contacting_any_host(results, case: dict, command: str) -> None:
    run, _ = results[_case_id(case, command)]
    _assert_refused(run)
    # The runner announces "apply: INVENTORY" and creates a run folder before it starts
    # Ansible; neither may happen for a bad inventory.
    assert not any(line.startswith("apply:") for line in run.stderr.splitlines())
    assert not (run.state_dir / "runs").exists(), "an Ansible run was prepared"
    if not case.get("usage"):
        assert NOT_CONTACTED in run.stderr


def test_cases_cover_every_fixture() -> None:
    """Every malformed inventory in the folder has an expectation, and vice versa."""
    listed = {c["file"] for c in CASES}
    on_disk = {p.name for p in BAD.iterdir() if p.name != "cases.yml"}
    own_tests = {"many-problems.yml", "good.yml"}
    assert listed | own_tests == on_disk
    assert len(listed) == len(CASES), "a fixture is listed twice"
    assert len(listed) >= 30


def test_good_control_is_accepted(results) -> None:
    """The control inventory passes, so the refusals above are about their one defect."""
    run, _ = results["good"]
    assert run.returncode == 0, run.stderr
    assert "gpu-01" in run.stdout and "qwen" in run.stdout


def test_private_api_key_file_is_accepted(results) -> None:
    """The world-readable key case fails because of the mode, not because of the path."""
    run, _ = results["private-key"]
    assert run.returncode == 0, run.stderr


def test_all_problems_are_reported_at_once(results) -> None:
    """One run lists every problem of every host, not only the first one found."""
    run, _ = results["many"]
    path = run.file
    _assert_refused(run)
    expected = [
        ("host gpu-01, instance qwen, prot:", "did you mean 'port'?"),
        ("host gpu-01, instance qwen, gpu_memory_utilization:", "(got 1.5)"),
        ("host gpu-01, instance BAD_NAME, name:", "(got 'BAD_NAME')"),
        ("host gpu-01, instance BAD_NAME, model:", "(got 'pypi:foo')"),
        ("host gpu-02, vllama_platfrom:", "did you mean 'vllama_platform'?"),
        ("host gpu-02, vllama_models_root:", "(got 'relative/models')"),
        ("host gpu-02, instance qwen, bind_address:", "(got 'localhost')"),
    ]
    problems = [line for line in run.stderr.splitlines() if line.startswith(f"  {path}")]
    for where, detail in expected:
        assert any(where in line and detail in line for line in problems), (where, run.stderr)
    assert len(problems) >= len(expected)


def test_limit_matching_no_host(results) -> None:
    path = BAD / "good.yml"
    for command in ("plan", "apply"):
        run, _ = results[f"limit:{command}"]
        _assert_refused(run)
        assert f"--limit gpu-99 matches no host in {path}; hosts: gpu-01" in run.stderr
        assert not (run.state_dir / "runs").exists()


def test_missing_inventory_file(results) -> None:
    run, _ = results["missing"]
    _assert_refused(run)
    assert f"{run.file}: no such inventory file" in run.stderr


def test_ansible_alone_accepts_a_broken_file(results, tmp_path: Path) -> None:
    """Why the YAML is parsed strictly first: Ansible alone only warns on a YAML syntax error
    and exits 0 with an empty inventory; with ANSIBLE_INVENTORY_UNPARSED_FAILED=1 it fails."""
    path = BAD / "yaml-syntax-error.yml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    # Run outside the repository so its ansible.cfg (unparsed_is_failed = true) is not read.
    argv = [sys.executable, "-m", "ansible.cli.inventory", "-i", str(path), "--list"]
    plain = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=120, check=False)
    assert plain.returncode == 0, plain.stderr
    listing = yaml.safe_load(plain.stdout)
    assert listing["_meta"]["hostvars"] == {}, "Ansible found hosts in a broken file?"
    strict = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**env, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1"}, check=False)
    assert strict.returncode != 0
    ours, _ = results["plan:yaml-syntax-error.yml"]
    _assert_refused(ours)

