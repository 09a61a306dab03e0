#!/usr/bin/python
"""Documentation only: the action plugin vllama_bundle_stage runs on the controller and has
no module of its own; this file holds its DOCUMENTATION, EXAMPLES and RETURN for ansible-doc and
ansible-test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_bundle_stage
short_description: Pack this host's part of a bundle into an archive on the controller
description:
  - Packs the OS packages and engine wheels this host needs from the bundle (chosen and checked
    against its signed manifest by M(vllama.provision.vllama_sources)) into one content-
    addressed archive, with the files and hashes the host checks after unpacking.
notes:
  - An action plugin that runs on the controller with the vllama-provision Python package
    (exactly the collection's version); the roles of this collection call it.
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Pack this host's part of the bundle.
  vllama.provision.vllama_bundle_stage:
  register: _vllama_bundle_stage
"""

RETURN = r"""
stage:
  description: The archive and the list of files with their hashes.
  returned: success
  type: dict
"""
