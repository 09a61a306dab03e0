#!/usr/bin/python
"""Documentation only: the action plugin vllama_wheel_adopt runs on the controller and has
no module of its own; this file holds its DOCUMENTATION, EXAMPLES and RETURN for ansible-doc and
ansible-test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_wheel_adopt
short_description: Store a wheel built on a host in the controller's wheelhouse
description:
  - Moves the wheels fetched back from the first host that built them into the controller's
    wheelhouse entry for their key.
options:
  key:
    description: The wheelhouse key.
    type: str
    required: true
  wheels:
    description: Paths of the fetched wheels on the controller.
    type: list
    elements: path
    required: true
notes:
  - An action plugin that runs on the controller with the vllama-provision Python package
    (exactly the collection's version); the roles of this collection call it.
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Keep the wheel this host built.
  vllama.provision.vllama_wheel_adopt:
    key: "{{ _vllama_build.key }}"
    wheels: ["/var/lib/vllama-provision/incoming/KEY/engine.whl"]
"""

RETURN = r"""
dir:
  description: The wheelhouse entry's folder.
  returned: success
  type: str
"""
