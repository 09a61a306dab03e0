"""Long steps show progress: the elapsed time and the log's latest line while they run, then
"done after" or "FAILED after" (vllama_provision.longrun), and build logs named by whole key."""

from __future__ import annotations

import dataclasses
import io
import sys
from pathlib import Path

import pytest

from vllama_provision import longrun, wheelhouse

SCRIPT = ("import sys, time\n"
          "for i in range(4):\n"
          "    print(f'[{25 * (i + 1):3d}%] Building object {i}', flush=True)\n"
          "    time.sleep(0.3)\n"
          "sys.exit(int(sys.argv[1]))\n")


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(longrun, "LOG_INTERVAL", 0.25)
    monkeypatch.setattr(longrun, "TTY_INTERVAL", 0.25)


def test_a_step_off_a_terminal_prints_full_lines_with_the_logs_latest_line(
        fast: None, tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    stream = _Stream(tty=False)
    code = longrun.run_logged([sys.executable, "-c", SCRIPT, "0"], log=log, what="compiling x",
                              show=True, stream=stream)
    out = stream.getvalue().splitlines()
    assert code == 0
    assert out[0] == f"compiling x (log: {log})"
    ticks = out[1:-1]
    assert len(ticks) >= 2, out
    assert all(t.startswith("compiling x: ") for t in ticks)
    assert any("%] Building object" in t for t in ticks), ticks
    assert "\r" not in stream.getvalue()
    assert out[-1].startswith("compiling x: done after ")
    assert "[100%] Building object 3" in log.read_text()


def test_a_failed_step_says_so_and_names_its_log(fast: None, tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    stream = _Stream(tty=True)
    code = longrun.run_logged([sys.executable, "-c", SCRIPT, "3"], log=log, what="compiling x",
                              show=True, stream=stream)
    assert code == 3
    text = stream.getvalue()
    assert "\r\033[K" in text  # on a terminal the status line is rewritten in place
    assert text.replace("\r\033[K", "\n").splitlines()[-1].startswith("compiling x: FAILED after ")
    assert text.rstrip().endswith(f"; see {log}")


def test_without_show_nothing_is_printed(tmp_path: Path, capsys) -> None:
    code = longrun.run_logged([sys.executable, "-c", SCRIPT, "0"], log=tmp_path / "l.log",
                              what="x")
    assert code == 0 and capsys.readouterr() == ("", "")


def test_last_line_reads_the_tail_and_shortens() -> None:
    assert longrun.last_line(Path("/nonexistent")) == ""


def test_last_line_of_carriage_return_progress(tmp_path: Path) -> None:
    log = tmp_path / "l.log"
    log.write_text("start\n 10% done\r 20% done\r\n\n" + "x" * 300 + "\n")
    assert longrun.last_line(log, 20) == "x" * 17 + "..."
    log.write_text("start\n 10% done\r 20% done\r\n\n")
    assert longrun.last_line(log) == "20% done"


def test_elapsed() -> None:
    assert [longrun.elapsed(s) for s in (0, 59.9, 60, 754)] == ["0s", "59s", "1m00s",
                                                                "12m34s"]


def test_the_build_log_is_named_after_the_whole_key(tmp_path: Path) -> None:
    key = wheelhouse.local_key()
    assert wheelhouse.log_path(key, tmp_path).name == f"{key.name}.log"
    other = dataclasses.replace(key, libc="glibc2.36")
    # "...-glibc2.36-<hash>": Path.with_suffix(".log") cut it to "...-glibc2.log" before.
    assert wheelhouse.log_path(other, tmp_path).name == f"{other.name}.log"
    assert ".36-" in wheelhouse.log_path(other, tmp_path).name
