#!/usr/bin/python
"""Documentation only: the action plugin vllama_zfs_preflight runs on the controller and has
no module of its own; this file holds its DOCUMENTATION, EXAMPLES and RETURN for ansible-doc and
ansible-test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_zfs_preflight
short_description: Check a host's ZFS model store before any change
description:
  - Reads the pool on the host through M(vllama.provision.vllama_zfs) and refuses the host
    before anything changes when the pool is missing, a property value is one the pool does not
    support, a dataset is not the tool's, or a mount folder is taken. Sets C(_vllama_zfs), the
    model datasets to create and seal. Hosts without C(vllama_zfs_dataset) are skipped.
notes:
  - An action plugin that runs on the controller with the vllama-provision Python package
    (exactly the collection's version); the roles of this collection call it.
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Check the ZFS model store.
  vllama.provision.vllama_zfs_preflight:
"""

RETURN = r"""
refusals:
  description: Why the host is refused.
  returned: when refused
  type: list
  elements: str
"""
