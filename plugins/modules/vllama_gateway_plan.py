#!/usr/bin/python
"""Documentation only: the action plugin vllama_gateway_plan runs on the controller and has
no module of its own; this file holds its DOCUMENTATION, EXAMPLES and RETURN for ansible-doc and
ansible-test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_gateway_plan
short_description: Plan this host's gateway from the whole inventory
description:
  - Validates the gateway host's variables and the fleet-level rules with the CLI's own
    validators, plans which instances serve each model from every host of the inventory
    (whatever the run's limit), and sets the C(_vllama_gateway) fact the gateway's templates
    are rendered from.
  - Refusals fail the task with C(vllama_refused=true).
options: {}
notes:
  - An action plugin that runs on the controller with the vllama-provision Python package
    (exactly the collection's version); the vllama_gateway role calls it.
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Plan this gateway.
  vllama.provision.vllama_gateway_plan:
"""

RETURN = r"""
gateway:
  description: The gateway's plan (also set as the C(_vllama_gateway) fact).
  returned: success
  type: dict
problems:
  description: What the validators refused.
  returned: when the inventory is invalid
  type: list
  elements: str
"""
