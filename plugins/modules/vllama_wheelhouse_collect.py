#!/usr/bin/python
"""Documentation only: the action plugin vllama_wheelhouse_collect runs on the controller and has
no module of its own; this file holds its DOCUMENTATION, EXAMPLES and RETURN for ansible-doc and
ansible-test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_wheelhouse_collect
short_description: Collect on the controller the engine wheels only the controller can provide
description:
  - Collects an engine and every dependency as wheels on the controller (for example vLLM's CPU
    build, whose torch wheel is not on PyPI), cached per key, so hosts install them with C(--no-
    index).
options:
  keys:
    description: The wheelhouse keys to collect, each with its C(spec).
    type: list
    elements: dict
    default: []
notes:
  - An action plugin that runs on the controller with the vllama-provision Python package
    (exactly the collection's version); the roles of this collection call it.
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Collect the wheels only the controller can provide.
  vllama.provision.vllama_wheelhouse_collect:
    keys: "{{ ansible_play_hosts
              | vllama.provision.vllama_missing_wheels(hostvars, 'controller') }}"
  run_once: true
"""

RETURN = r"""
collected:
  description: The wheelhouse entries collected by this run (C(key) and what they hold).
  returned: success
  type: list
  elements: dict
"""
