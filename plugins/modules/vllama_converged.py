#!/usr/bin/python
"""Documentation only: the action plugin vllama_converged runs on the controller and calls the
vllama_state module; this file holds its DOCUMENTATION, EXAMPLES and RETURN for ansible-doc and
ansible-test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_converged
short_description: Find out in one round trip whether a vllama host matches its desired state
description:
  - Plans the host on the controller from the facts the controller saw in the last run that
    gathered them, and in one round trip to the host gathers its facts and, when they are the
    same, compares the whole desired state under the host lock (as
    M(vllama.provision.vllama_state) does), releasing the lock in the same round trip.
  - C(converged) is true only when the facts are the same and nothing differs. The play then
    ends for the host. Anything else leaves the host to the whole play; this never fails a host
    and changes nothing.
  - Nothing is checked here (C(converged=false), no round trip) in check or diff mode, with
    tags, in rollout steps, rollbacks, key rotations, bundle runs, engine overrides,
    C(vllama_verify_store) and C(vllama_require_artifacts), for hosts without instances, and
    without facts from an earlier run.
options:
  pynvml_path:
    description: As the option of M(vllama.provision.vllama_host_facts).
    type: str
    default: ""
  sysfs_root:
    description: As the option of M(vllama.provision.vllama_host_facts).
    type: str
    default: /sys
  macos_command_root:
    description: As the option of M(vllama.provision.vllama_host_facts).
    type: str
    default: ""
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Find out whether this host already matches its desired state.
  vllama.provision.vllama_converged:
    pynvml_path: "{{ vllama_facts_pynvml_path }}"
    sysfs_root: "{{ vllama_facts_sysfs_root }}"
    macos_command_root: "{{ vllama_facts_macos_command_root }}"
  register: __vllama_converged
"""

RETURN = r"""
converged:
  description: The host's facts and whole desired state match; nothing must run.
  returned: always
  type: bool
vllama_facts:
  description: The host's facts, when the check reached the host (also set as a fact).
  returned: when the host was reached
  type: dict
plan:
  description: The plan (as M(vllama.provision.vllama_plan) returns it), for a converged host.
  returned: when converged
  type: dict
instances:
  description: The releases each instance has (as M(vllama.provision.vllama_state)), for a
    converged host.
  returned: when converged
  type: dict
"""
