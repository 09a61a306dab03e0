#!/usr/bin/python
"""Documentation only: the action plugin vllama_downgrade runs on the controller and has
no module of its own; this file holds its DOCUMENTATION, EXAMPLES and RETURN for ansible-doc and
ansible-test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_downgrade
short_description: Refuse an engine downgrade nobody asked for
description:
  - Refuses the host when an instance already runs a newer engine than the inventory asks for,
    unless downgrades are allowed (C(vllama-provision apply --allow-downgrade), extra variable
    C(vllama_allow_downgrade)).
options:
  instances:
    description: The planned instances (the plan's C(instances)).
    type: list
    elements: dict
    required: true
  releases:
    description: The host's releases per instance, as M(vllama.provision.vllama_release) reads them.
    type: dict
    required: true
  allow:
    description: Allow the downgrades.
    type: bool
    default: false
notes:
  - An action plugin that runs on the controller with the vllama-provision Python package
    (exactly the collection's version); the roles of this collection call it.
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Refuse engine downgrades.
  vllama.provision.vllama_downgrade:
    instances: "{{ _vllama_plan.instances }}"
    releases: "{{ __vllama_releases_before.instances }}"
    allow: false
"""

RETURN = r"""
downgrades:
  description: The downgrades found, one per instance.
  returned: always
  type: list
  elements: dict
"""
