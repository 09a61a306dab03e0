"""Clients of a model service during a rollout, for the gateway tier and its benchmark.

``Clients`` sends requests at a fixed rate whatever the answers take (open loop), alternating a
chat and a streamed chat to one model, and records every failure and every stream that ended
without its finish reason. ``Gap`` asks one model every 0.25 s and measures the longest run of
failed answers. Both take an ``openai.OpenAI`` client made with ``max_retries=0``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from openai import APIError, APIStatusError


class Clients:
    """Clients of the service during a rollout: requests sent at a fixed rate whatever the
    answers take (open loop), alternating a chat and a streamed chat to one model, each with
    OpenAI's client and max_retries=0. Records every failure and every stream that ended
    without its finish reason."""

    def __init__(self, client: Any, model: str, rate: float, workers: int = 32):
        self.client = client
        self.model, self.rate = model, rate
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.sent = 0
        self.ok = 0
        self.failures: list[str] = []
        self.cut: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._schedule)
        self.seconds = 0.0

    def _one(self, stream: bool) -> None:
        try:
            if stream:
                chunks = list(self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": "Hi"}],
                    max_tokens=2, stream=True))
                if not any(c.choices and c.choices[0].finish_reason for c in chunks):
                    with self.lock:
                        self.cut.append(f"{len(chunks)} chunks, no finish reason")
                    return
            else:
                self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": "Hi"}],
                    max_tokens=1)
        except Exception as exc:  # every failure counts, whatever its kind
            with self.lock:
                self.failures.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        with self.lock:
            self.ok += 1

    def _schedule(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            self.pool.submit(self._one, self.sent % 2 == 1)
            self.sent += 1
            next_at = start + self.sent / self.rate
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        self.seconds = time.monotonic() - start

    def __enter__(self) -> Clients:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.pool.shutdown(wait=True)


class Gap:
    """One client asking a model every 0.25 s: how long it answered 503 (a known model with no
    instance in service)."""

    def __init__(self, client: Any, model: str):
        self.client = client
        self.model = model
        self.results: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.is_set():
            status = 200
            try:
                self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
            except APIStatusError as exc:
                status = exc.status_code
            except APIError:
                status = 0
            self.results.append((time.monotonic(), status))
            self.stop.wait(0.25)

    @property
    def seconds(self) -> float:
        """Longest run of consecutive failed answers, in seconds."""
        longest, start = 0.0, None
        for moment, status in self.results:
            if status != 200 and start is None:
                start = moment
            elif status == 200 and start is not None:
                longest, start = max(longest, moment - start), None
        return longest

    def __enter__(self) -> Gap:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
