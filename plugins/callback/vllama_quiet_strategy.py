"""Drop ansible-core's deprecation warning for strategies outside ansible.builtin.

vllama-provision runs Mitogen's strategy (``--strategy mitogen|auto``) on purpose; ansible-core
2.19 prints on every such run that third-party strategies are deprecated, which users can do
nothing about. When the CLI chose Mitogen it sets VLLAMA_QUIET_STRATEGY_DEPRECATION; this
callback, loaded before the play's strategy, then drops exactly that one message. Every other
deprecation warning is still shown. (The message and the variable are also in
vllama_provision/strategy.py; a unit test keeps them equal. No import of the package here: this
callback has nothing to ask it.)
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: vllama_quiet_strategy
type: aggregate
short_description: Hide the deprecation warning for the Mitogen strategy vllama-provision chose
description:
  - Active only when VLLAMA_QUIET_STRATEGY_DEPRECATION is set (by vllama-provision).
  - The vllama-provision CLI enables it (its ansible.cfg sets callbacks_enabled).
"""

import functools
import os

from ansible.plugins.callback import CallbackBase
from ansible.utils.display import Display

# ansible-core 2.19, ansible/plugins/loader.py, PluginLoader.get.
DEPRECATION_TEXT = "Use of strategy plugins not included in ansible.builtin are deprecated"
QUIET_ENV = "VLLAMA_QUIET_STRATEGY_DEPRECATION"


def _quiet(deprecated):
    @functools.wraps(deprecated)
    def wrapper(self, msg, *args, **kwargs):
        if str(msg).startswith(DEPRECATION_TEXT):
            return None
        return deprecated(self, msg, *args, **kwargs)

    wrapper.vllama_quiet = True
    return wrapper


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "vllama_quiet_strategy"
    CALLBACK_NEEDS_ENABLED = True  # ansible.cfg: callbacks_enabled

    def __init__(self):
        super().__init__()
        if os.environ.get(QUIET_ENV) and not getattr(Display.deprecated, "vllama_quiet", False):
            Display.deprecated = _quiet(Display.deprecated)
