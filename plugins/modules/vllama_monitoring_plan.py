#!/usr/bin/python
"""Documentation only: the action plugin vllama_monitoring_plan runs on the controller and has
no module of its own; this file holds its DOCUMENTATION, EXAMPLES and RETURN for ansible-doc and
ansible-test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_monitoring_plan
short_description: Plan this host's part of the fleet's monitoring
description:
  - Validates the host's variables and the fleet-level rules with the CLI's own validators.
  - Sets C(_vllama_node_exporter) (where the host's node exporter listens) on every host, and
    on a host of the group vllama_monitoring C(_vllama_monitoring), the plan its Prometheus is
    rendered from (every scrape target of the inventory, whatever the run's limit), and
    C(_vllama_monitoring_password_hash), the bcrypt hash of the password the controller keeps.
  - Refusals fail the task with C(vllama_refused=true).
options: {}
notes:
  - An action plugin that runs on the controller with the vllama-provision Python package
    (exactly the collection's version); the vllama_monitoring and vllama_node_exporter roles
    call it.
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Plan this host's monitoring.
  vllama.provision.vllama_monitoring_plan:
"""

RETURN = r"""
problems:
  description: What the validators refused.
  returned: when the inventory is invalid
  type: list
  elements: str
"""
