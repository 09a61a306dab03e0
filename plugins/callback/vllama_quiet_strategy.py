"""Drop ansible-core's deprecation warning for strategies outside ansible.builtin.

vllama-provision runs Mitogen's strategy (``--strategy mitogen|auto``) on purpose; ansible-core
2.19 prints on every such run that third-party strategies are deprecated, which users can do
nothing about. When the CLI chose Mitogen it sets VLLAMA_QUIET_STRATEGY_DEPRECATION; this
callback, loaded before the play's strategy, then drops exactly that one message. Every other
deprecation warning is still shown.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from ansible.plugins.callback import CallbackBase
from ansible.utils.display import Display

from vllama_provision.strategy import DEPRECATION_TEXT, QUIET_ENV

DOCUMENTATION = r"""
name: vllama_quiet_strategy
type: aggregate
short_description: Hide the deprecation warning for the Mitogen strategy vllama-provision chose
description:
  - Active only when VLLAMA_QUIET_STRATEGY_DEPRECATION is set (by vllama-provision).
"""


def _quiet(deprecated: Any) -> Any:
    @functools.wraps(deprecated)
    def wrapper(self: Display, msg: str, *args: Any, **kwargs: Any) -> None:
        if str(msg).startswith(DEPRECATION_TEXT):
            return None
        return deprecated(self, msg, *args, **kwargs)

    wrapper.vllama_quiet = True  # type: ignore[attr-defined]
    return wrapper


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "vllama_quiet_strategy"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self) -> None:
        super().__init__()
        if os.environ.get(QUIET_ENV) and not getattr(Display.deprecated, "vllama_quiet", False):
            Display.deprecated = _quiet(Display.deprecated)  # type: ignore[method-assign]
