"""Which Ansible strategy runs the plays: the stock ``linear`` or Mitogen's ``mitogen_linear``.

The choice is made here and nowhere else, once, before a run starts:

    linear   ansible-core's own strategy (the default, and the suite's).
    mitogen  Mitogen's strategy; an error (exit 2) when Mitogen is not installed or does not
             support the installed ansible-core. A Mitogen release outside the tested range is
             used with a warning: the user asked for it.
    auto     Mitogen when its installed release is inside TESTED_MITOGEN and ansible-core is
             inside the range that release supports; otherwise linear.

A run that fails under one strategy is never retried under the other: it may already have
changed hosts, and a second run would report on a different play than the one that failed.

Mitogen is enabled through ansible-core's strategy plugin path (ANSIBLE_STRATEGY_PLUGINS and
ANSIBLE_STRATEGY=mitogen_linear). ansible-core 2.19 warns that strategies outside
ansible.builtin are deprecated on every such run; the callback plugin
``vllama_quiet_strategy`` drops exactly that warning (and nothing else).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from vllama_provision.errors import UsageError

CHOICES = ("auto", "linear", "mitogen")
ENV_VAR = "VLLAMA_STRATEGY"
DEFAULT = "linear"  # the suite's and the users' default until the suite passes under Mitogen

# Mitogen releases this project ran its suite's Mitogen checks with (keep in step with the
# `mitogen` extra in pyproject.toml). `auto` uses no other.
TESTED_MITOGEN = SpecifierSet(">=0.3.54,<0.3.55")

# ansible-core releases each Mitogen release supports, from Mitogen's own changelog: the first
# Mitogen release supporting a line, and the first ansible-core line it does not support.
#   0.3.25 (2025-07-29): Ansible 12 (ansible-core 2.19)
#   0.3.33 (2025-11-22): Ansible 13 (ansible-core 2.20)
#   0.3.49 (2026-06-03): Ansible 14 (ansible-core 2.21)
# Its oldest supported ansible-core is 2.10 (ansible_mitogen/loaders.py, ANSIBLE_VERSION_MIN).
ANSIBLE_CORE_MIN = Version("2.10")
_CORE_BELOW = [  # (Mitogen release at least, ansible-core below), newest first
    (Version("0.3.49"), Version("2.22")),
    (Version("0.3.33"), Version("2.21")),
    (Version("0.3.25"), Version("2.20")),
    (Version("0.3.0"), Version("2.19")),
]

# The exact message ansible-core 2.19 prints (through Display.deprecated, in
# ansible/plugins/loader.py, PluginLoader.get) for every strategy outside ansible.builtin.
DEPRECATION_TEXT = "Use of strategy plugins not included in ansible.builtin are deprecated"
QUIET_ENV = "VLLAMA_QUIET_STRATEGY_DEPRECATION"


@dataclass(frozen=True)
class Installed:
    """What is installed on the controller (None: not installed)."""

    mitogen: str | None
    ansible_core: str | None
    plugins: Path | None  # ansible_mitogen's strategy plugin folder


@dataclass(frozen=True)
class Strategy:
    name: str  # "linear" or "mitogen"
    why: str
    plugins: Path | None = None
    warning: str = ""

    @property
    def ansible_name(self) -> str:
        return "mitogen_linear" if self.name == "mitogen" else "linear"

    def env(self) -> dict[str, str]:
        """The variables to add to the environment of ansible-playbook."""
        if self.name != "mitogen":
            return {"ANSIBLE_STRATEGY": "linear"}
        return {"ANSIBLE_STRATEGY": "mitogen_linear",
                "ANSIBLE_STRATEGY_PLUGINS": str(self.plugins),
                QUIET_ENV: "1"}


LINEAR = Strategy("linear", "the stock strategy")
_chosen: Strategy | None = None


def chosen() -> Strategy:
    """The strategy the CLI chose for this process (``--strategy``), else linear: the default
    of every RunRequest, so that a run started deep in a command gets it too."""
    return _chosen or LINEAR


def set_chosen(strategy: Strategy | None) -> None:
    global _chosen
    _chosen = strategy


def installed() -> Installed:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    plugins = None
    spec = importlib.util.find_spec("ansible_mitogen")  # found without importing it
    if spec is not None and spec.origin:
        plugins = Path(spec.origin).parent / "plugins" / "strategy"
    return Installed(mitogen=version("mitogen"), ansible_core=version("ansible-core"),
                     plugins=plugins)


def supported_core(mitogen: Version) -> tuple[Version, Version]:
    """The ansible-core range [low, high) a Mitogen release supports."""
    for since, below in _CORE_BELOW:
        if mitogen >= since:
            return ANSIBLE_CORE_MIN, below
    return ANSIBLE_CORE_MIN, Version("2.19")


def _problem(found: Installed) -> str:
    """Why Mitogen cannot run here ('' when it can)."""
    if not found.mitogen or found.plugins is None or not (found.plugins
                                                           / "mitogen_linear.py").is_file():
        return ("Mitogen is not installed; install it with "
                "`pip install 'vllama-provision[mitogen]'` (or `pip install mitogen==0.3.54`)")
    try:
        mitogen = Version(found.mitogen)
        core = Version(found.ansible_core or "0")
    except InvalidVersion as exc:
        return f"cannot read an installed version: {exc}"
    low, high = supported_core(mitogen)
    core_line = Version(f"{core.major}.{core.minor}")
    if not low <= core_line < high:
        return (f"Mitogen {mitogen} supports ansible-core {low} to below {high}; this is "
                f"ansible-core {core}")
    return ""


def choose(requested: str | None, found: Installed | None = None) -> Strategy:
    """The strategy for ``requested`` (auto, linear, mitogen; None: VLLAMA_STRATEGY or the
    default). Raises UsageError (exit 2) when Mitogen is forced but cannot run."""
    requested = (requested or os.environ.get(ENV_VAR) or DEFAULT).strip().lower()
    if requested not in CHOICES:
        raise UsageError(f"unknown strategy {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested == "linear":
        return LINEAR
    found = found or installed()
    problem = _problem(found)
    if requested == "mitogen":
        if problem:
            raise UsageError(f"--strategy mitogen: {problem}")
        tested = found.mitogen in TESTED_MITOGEN
        warning = "" if tested else (f"Mitogen {found.mitogen} is outside the tested range "
                                     f"({TESTED_MITOGEN}); used because it was asked for")
        return Strategy("mitogen", f"--strategy mitogen; Mitogen {found.mitogen}", found.plugins,
                        warning)
    if problem:
        return Strategy("linear", f"auto: {problem}")
    if found.mitogen not in TESTED_MITOGEN:
        return Strategy("linear", f"auto: Mitogen {found.mitogen} is outside the tested range "
                                  f"({TESTED_MITOGEN})")
    return Strategy("mitogen", f"auto: Mitogen {found.mitogen} with ansible-core "
                               f"{found.ansible_core}", found.plugins)
