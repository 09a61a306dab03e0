"""Long steps that show they are alive: a command whose output goes to a log file, with the
elapsed time and the log's latest line printed while it runs.

On a terminal the status line is rewritten every 2 seconds; otherwise (CI logs, files) a full
line is printed every 30 seconds, so a log stays readable. Either way the step ends with
"done after ..." or "FAILED after ...", and the log's path is named at the start.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

Echo = Callable[[str], None]

TTY_INTERVAL = 2.0
LOG_INTERVAL = 30.0


def elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def last_line(log: Path, limit: int = 100) -> str:
    """The log's last non-empty line (its tail only is read), shortened to ``limit``."""
    try:
        with log.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 8192))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Ticker:
    """Print ``what``'s elapsed time and the log's latest line until stopped."""

    def __init__(self, what: str, log: Path, *, stream: IO[str] | None = None,
                 interval: float | None = None, tty: bool | None = None):
        self.what = what
        self.log = log
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval or (TTY_INTERVAL if self.tty else LOG_INTERVAL)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def line(self) -> str:
        latest = last_line(self.log)
        return (f"{self.what}: {elapsed(time.monotonic() - self.started)}"
                + (f" | {latest}" if latest else ""))

    def _write(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text[:200])
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._write(self.line())

    def __enter__(self) -> Ticker:
        self.stream.write(f"{self.what} (log: {self.log})\n")
        self.stream.flush()
        self._thread.start()
        return self

    def finish(self, ok: bool) -> None:
        self._stop.set()
        self._thread.join()
        if self.tty:
            self.stream.write("\r\033[K")
        took = elapsed(time.monotonic() - self.started)
        verdict = f"done after {took}" if ok else f"FAILED after {took}; see {self.log}"
        self.stream.write(f"{self.what}: {verdict}\n")
        self.stream.flush()

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.finish(exc[0] is None)


def run_logged(cmd: Sequence[str | Path], *, log: Path, what: str, show: bool = False,
               env: Mapping[str, str] | None = None, cwd: Path | None = None,
               stream: IO[str] | None = None) -> int:
    """Run ``cmd`` with its output appended to ``log``; with ``show``, tick while it runs.
    Returns the exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        if not show:
            return subprocess.run(list(map(str, cmd)), stdout=out, stderr=subprocess.STDOUT,
                                  env=env, cwd=cwd, check=False).returncode
        ticker = Ticker(what, log, stream=stream)
        with ticker:
            code = subprocess.run(list(map(str, cmd)), stdout=out, stderr=subprocess.STDOUT,
                                  env=env, cwd=cwd, check=False).returncode
            ticker.finish(code == 0)
        return code
