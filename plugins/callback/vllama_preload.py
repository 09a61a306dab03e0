"""Import the collection's controller-side plan and comparison actions once per run.

ansible-playbook runs every task of every host in a worker process forked from its main
process. A worker has for free whatever the main process imported before the fork, and imports
the rest again. The plan and comparison actions of the vllama role import most of the
vllama-provision package (validator, planner, templates, model sources): imported in each worker,
that cost about 0.1-0.2 s of controller CPU per host and task, the largest part of a converged
run that grew with the number of hosts. Loaded by the CLI's ansible.cfg before the play, this
callback imports them in the main process, once. An action that cannot be imported is not
reported here: its own task says what is missing when it runs.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: vllama_preload
type: aggregate
short_description: Import the vllama role's controller-side actions once, before the play
description:
  - Imports the plan, comparison and sources actions of the collection in ansible-playbook's
    main process, so the worker forked for each host and task finds them already imported.
  - Changes nothing else; does nothing when the vllama-provision package cannot be imported.
  - The vllama-provision CLI enables it (its ansible.cfg sets callbacks_enabled).
"""

import contextlib
import importlib

from ansible.plugins.callback import CallbackBase

# The actions every run of the vllama role executes on every host (a converged run included).
PRELOADED = ("vllama_plan", "vllama_state", "vllama_sources", "vllama_converged")
PACKAGE = "ansible_collections.vllama.provision.plugins.action"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "vllama_preload"
    CALLBACK_NEEDS_ENABLED = True  # ansible.cfg: callbacks_enabled

    def __init__(self):
        super().__init__()
        for name in PRELOADED:
            with contextlib.suppress(ImportError):
                importlib.import_module(f"{PACKAGE}.{name}")
