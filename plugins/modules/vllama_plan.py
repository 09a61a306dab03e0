#!/usr/bin/python
"""Documentation only: the action plugin vllama_plan runs on the controller and has
no module of its own; this file holds its DOCUMENTATION, EXAMPLES and RETURN for ansible-doc and
ansible-test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_plan
short_description: Plan this host with the vllama-provision planner
description:
  - Plans the engines, releases and files of the host from its C(vllama_*) variables and facts
    with the CLI's own planner, and sets the C(_vllama_plan) fact every template on the host is
    rendered from.
  - Refusals fail the task with C(vllama_refused=true).
options:
  facts:
    description: The host's facts from M(vllama.provision.vllama_host_facts) (C(vllama_facts)).
    type: dict
notes:
  - An action plugin that runs on the controller with the vllama-provision Python package
    (exactly the collection's version); the roles of this collection call it.
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Plan this host.
  vllama.provision.vllama_plan:
    facts: "{{ vllama_facts | default(omit) }}"
"""

RETURN = r"""
plan:
  description: The host's plan (also set as the C(_vllama_plan) fact).
  returned: success
  type: dict
"""
