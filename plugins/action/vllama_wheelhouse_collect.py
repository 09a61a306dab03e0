"""Collect, on the controller, the wheelhouse keys only the controller can provide.

vLLM's CPU build pins a torch wheel that is not on PyPI (``torch==2.13.0+cpu``): the controller
collects the engine and every dependency as wheels (``vllama_provision.wheelhouse``, cached per
key under the controller's cache) and hosts install them with ``--no-index``, as an air-gapped
site would. Runs once per play; parallel callers of the same key wait for each other.
"""

from __future__ import annotations

import time

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision import wheelhouse
    from vllama_provision.errors import VllamaError
    from vllama_provision.inventory import to_plain
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        require_package(VLLAMA_IMPORT_ERROR)
        result = super().run(tmp, task_vars)
        wanted = to_plain(self._task.args.get("keys") or [])
        collected = []
        try:
            for item in wanted:
                key = wheelhouse.WheelKey(**item["spec"])
                if wheelhouse.archive(key):
                    continue
                start = time.monotonic()
                wheelhouse.build(key)
                collected.append({"key": key.name,
                                  "seconds": round(time.monotonic() - start, 1)})
        except (VllamaError, KeyError, TypeError) as exc:
            result.update(failed=True, msg=f"engine wheelhouse: {exc}")
            return result
        result.update(changed=bool(collected), collected=collected)
        return result
