"""Exception types. The CLI turns each into a message and an exit code, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

EXIT_OK = 0
EXIT_HOST_FAILED = 1
EXIT_BAD_INPUT = 2


class VllamaError(Exception):
    """Base class: every error the CLI reports cleanly."""

    exit_code = EXIT_HOST_FAILED


class UsageError(VllamaError):
    """A command was called wrongly, or needs something this machine does not have."""

    exit_code = EXIT_BAD_INPUT


@dataclass
class Problem:
    """One thing wrong with the inventory, located as precisely as possible."""

    message: str
    file: str = ""
    host: str = ""
    instance: str = ""
    variable: str = ""
    value: object = None
    allowed: str = ""
    suggestion: str = ""
    has_value: bool = field(default=False, repr=False)

    def render(self) -> str:
        where = [p for p in (self.file, f"host {self.host}" if self.host else "",
                             f"instance {self.instance}" if self.instance else "",
                             self.variable) if p]
        text = ": ".join([", ".join(where), self.message]) if where else self.message
        if self.has_value:
            text += f" (got {self.value!r})"
        if self.allowed:
            text += f"; allowed: {self.allowed}"
        if self.suggestion:
            text += f"; did you mean '{self.suggestion}'?"
        return text


class InventoryError(VllamaError):
    """The inventory cannot be used: nothing is sent to any host."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems))


class LabError(VllamaError):
    """A lab host could not be created, reached or removed."""

    exit_code = EXIT_HOST_FAILED


class RunError(VllamaError):
    """Ansible could not be started or its run could not be read."""

    exit_code = EXIT_HOST_FAILED


class BundleError(VllamaError):
    """A bundle could not be built, or a bundle file does not match its manifest."""

    exit_code = EXIT_HOST_FAILED


class BundleSignatureError(VllamaError):
    """A bundle's manifest is unsigned, or its signature does not verify: no host is touched."""

    exit_code = EXIT_BAD_INPUT


def suggest(name: str, known: Sequence[str]) -> str:
    """The closest known name to a misspelt one, or ''."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return match[0] if match else ""
