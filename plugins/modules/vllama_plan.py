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
  validate:
    description:
      - First validate the host's C(vllama_*) variables with the CLI's own validator, as
        M(vllama.provision.vllama_validate) does (the same message, nothing planned).
    type: bool
    default: false
  deployed_only:
    description:
      - Refuse instances this release renders but does not deploy (a service manager other
        than systemd).
    type: bool
    default: false
  sources:
    description:
      - Also resolve where each model and engine wheel comes from, as
        M(vllama.provision.vllama_sources) does, and set the C(_vllama_sources) fact.
    type: bool
    default: false
notes:
  - An action plugin that runs on the controller with the vllama-provision Python package
    (exactly the collection's version); the roles of this collection call it.
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Plan this host.
  vllama.provision.vllama_plan:
    facts: "{{ vllama_facts | default(omit) }}"

- name: Validate, plan and resolve the sources of this host in one task.
  vllama.provision.vllama_plan:
    facts: "{{ vllama_facts | default(omit) }}"
    validate: true
    deployed_only: true
    sources: true
"""

RETURN = r"""
plan:
  description: The host's plan (also set as the C(_vllama_plan) fact).
  returned: success
  type: dict
sources:
  description: Per instance, the model's and engine wheel's source (with O(sources)).
  returned: success and sources
  type: dict
problems:
  description: What the validator refused (with O(validate)).
  returned: when the variables are invalid
  type: list
  elements: str
"""
