#!/usr/bin/python
"""Documentation only: the action plugin vllama_zfs_gc runs on the controller and has
no module of its own; this file holds its DOCUMENTATION, EXAMPLES and RETURN for ansible-doc and
ansible-test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_zfs_gc
short_description: Destroy the ZFS model datasets no release references
description:
  - Reads the tool's model datasets and the releases' links on the host through
    M(vllama.provision.vllama_zfs), decides on the controller which no release references, and
    destroys those (with their snapshots). Datasets the tool did not make are never touched;
    check mode reports what it would destroy.
options:
  keep:
    description: Dataset names kept whatever references them.
    type: list
    elements: str
    default: []
notes:
  - An action plugin that runs on the controller with the vllama-provision Python package
    (exactly the collection's version); the roles of this collection call it.
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Destroy unreferenced model datasets.
  vllama.provision.vllama_zfs_gc:
    keep: []
  register: vllama_zfs_gc_result
"""

RETURN = r"""
destroyed:
  description: The datasets destroyed (or that would be, in check mode).
  returned: always
  type: list
  elements: str
kept:
  description: The datasets kept.
  returned: always
  type: list
  elements: str
"""
