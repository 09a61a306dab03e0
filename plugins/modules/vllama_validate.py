#!/usr/bin/python
"""Documentation only: the action plugin vllama_validate runs on the controller and has
no module of its own; this file holds its DOCUMENTATION, EXAMPLES and RETURN for ansible-doc and
ansible-test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_validate
short_description: Validate this host's vllama variables with the CLI's validator
description:
  - Validates the host's C(vllama_*) variables with the same code the vllama-provision CLI runs
    before it contacts any host, so a play started with ansible-playbook refuses bad input
    before any change, with the same messages.
notes:
  - An action plugin that runs on the controller with the vllama-provision Python package
    (exactly the collection's version); the roles of this collection call it.
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Validate this host's variables.
  vllama.provision.vllama_validate:
"""

RETURN = r"""
problems:
  description: What is wrong with the host's variables (empty when nothing is).
  returned: always
  type: list
  elements: str
"""
