"""pytest fixtures for real lab hosts.

Load with ``pytest_plugins = ["vllama_provision.lab.pytest_plugin"]`` (or ``-p`` on the command
line).

Fixtures:

- ``lab_golden`` (session): the path of the bookworm golden rootfs (built on first use).
- ``lab_factory`` (function) and ``lab_factory_module`` (module): callables
  ``factory(n=1, *, fuse=False, docker=False, isolated=False, models_size=None, user=None,
  from_snapshot=None, suite="bookworm") -> Lab``. Each call brings up a new lab named
  ``t-<8 hex>`` (see :class:`vllama_provision.lab.handle.Lab`); every lab and snapshot made through
  a factory is removed when the fixture's scope ends, whether the test passed or not.

When the machine cannot run lab hosts (not root, not Linux, no systemd-nspawn) the fixtures skip
the test with the reason, or fail it when the ``CI`` environment variable is true: a lab test never
passes without having run.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from vllama_provision.lab import golden
from vllama_provision.lab.handle import Lab, LabHost
from vllama_provision.lab.system import NEEDS, missing_capabilities

__all__ = ["Lab", "LabFactory", "LabHost"]


class LabFactory(Protocol):
    def __call__(self, n: int = 1, *, fuse: bool = False, docker: bool = False,
                 isolated: bool = False, models_size: str | None = None, user: str | None = None,
                 from_snapshot: str | None = None, suite: str = "bookworm") -> Lab: ...


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def require_lab(*, need_debootstrap: bool = False) -> None:
    """Skip (or, under CI, fail) the current test unless this machine can run lab hosts."""
    missing = missing_capabilities(need_debootstrap=need_debootstrap)
    if not missing:
        return
    reason = f"LAB HOSTS UNAVAILABLE: {NEEDS}: {'; '.join(missing)}"
    if _in_ci():
        pytest.fail(reason + " (CI=true: lab tests must run)", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: needs real lab hosts (root, Linux, systemd-nspawn)")
    config.addinivalue_line("markers", "molecule: runs a whole `molecule test` scenario on lab "
                            "hosts (about a minute; deselect with -m 'not molecule')")


@pytest.fixture(scope="session")
def lab_golden() -> Path:
    """The bookworm golden rootfs, built once per recipe (takes 1-3 minutes the first time)."""
    require_lab()
    if golden.cached(golden.DEFAULT_SUITE) is None:
        require_lab(need_debootstrap=True)
    return golden.ensure(golden.DEFAULT_SUITE)


def _factory(created: list[Lab]) -> LabFactory:
    def factory(n: int = 1, *, fuse: bool = False, docker: bool = False, isolated: bool = False,
                models_size: str | None = None, user: str | None = None,
                from_snapshot: str | None = None, suite: str = "bookworm") -> Lab:
        name = f"t-{secrets.token_hex(4)}"
        lab = Lab.up(n, lab=name, fuse=fuse, docker=docker, isolated=isolated,
                     models_size=models_size, user=user, from_snapshot=from_snapshot,
                     suite=None if from_snapshot else suite)
        created.append(lab)
        return lab

    return factory


def _teardown(created: list[Lab]) -> None:
    errors = []
    for lab in reversed(created):
        try:
            lab.down()
        except Exception as exc:
            errors.append(f"lab {lab.name}: {exc}")
    for lab in reversed(created):
        try:
            lab.forget_snapshots()
        except Exception as exc:
            errors.append(f"snapshots of lab {lab.name}: {exc}")
    if errors:
        pytest.fail("lab teardown failed:\n" + "\n".join(errors), pytrace=False)


def _scoped_factory(lab_golden: Path) -> Iterator[LabFactory]:
    created: list[Lab] = []
    try:
        yield _factory(created)
    finally:
        _teardown(created)


@pytest.fixture
def lab_factory(lab_golden: Path) -> Iterator[LabFactory]:
    """Bring up labs for one test; they are removed when the test ends."""
    yield from _scoped_factory(lab_golden)


@pytest.fixture(scope="module")
def lab_factory_module(lab_golden: Path) -> Iterator[LabFactory]:
    """Bring up labs shared by a module's tests; they are removed after the module."""
    yield from _scoped_factory(lab_golden)
