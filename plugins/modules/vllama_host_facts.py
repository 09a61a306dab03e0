#!/usr/bin/python
"""Gather the host facts vllama-provision plans with (platform, NVIDIA GPUs through NVML, Apple).

The result has the one shape defined in vllama_provision/gpu.py (schema 1). Runs on the host with
the standard library only. NVML is read through nvidia-ml-py (``pynvml``) carried WITH the module
(module_utils/vllama_pynvml.py, a verbatim copy of the pinned release that Ansible ships inside
the module's payload), so nothing is pip-installed into the system Python (PEP 668), no venv has
to exist before the first facts run, and gathering facts stays read-only and works offline.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_host_facts
short_description: Gather platform and GPU facts for vllama-provision
description:
  - Returns C(vllama_facts) (also as an Ansible fact) in vllama-provision's host facts shape.
  - NVIDIA devices on the PCI bus are listed even when no driver is loaded.
  - A host without a GPU gets explicit empty GPU facts, never an error.
  - Whether the running kernel's headers are installable (C(platform.kernel_headers_installable),
    read by the NVIDIA driver role) is asked of the package manager only on hosts with NVIDIA
    hardware; elsewhere it is null (not checked).
options:
  pynvml_path:
    description:
      - Folder to import C(pynvml) from instead of the copy carried with the module.
      - The tests put a mock NVML there (no GPU exists on the test machines).
    type: str
    default: ""
  sysfs_root:
    description: Where sysfs is mounted (a fake tree in tests).
    type: str
    default: /sys
  macos_command_root:
    description:
      - A folder macOS's commands are found under (C(<root>/usr/bin/uname),
        C(<root>/usr/bin/sw_vers), C(<root>/usr/sbin/sysctl)...), and the system and machine
        are then asked of C(<root>/usr/bin/uname) instead of the running kernel.
      - Empty on real hosts. The tests' stand-in Mac (a Linux host imitating macOS's commands
        under such a folder) names it; Linux's own commands stay untouched.
    type: str
    default: ""
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Gather vllama-provision host facts.
  vllama.provision.vllama_host_facts:
"""

RETURN = r"""
vllama_facts:
  description: Host facts in vllama-provision's schema 1 shape.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vllama.provision.plugins.module_utils.vllama_host_facts import gather


def main():
    module = AnsibleModule(argument_spec={"pynvml_path": {"type": "str", "default": ""},
                                          "sysfs_root": {"type": "str", "default": "/sys"},
                                          "macos_command_root": {"type": "str", "default": ""}},
                           supports_check_mode=True)
    facts = gather(module.params["pynvml_path"], module.params["sysfs_root"],
                   module.params["macos_command_root"])
    module.exit_json(changed=False, vllama_facts=facts, ansible_facts={"vllama_facts": facts})


if __name__ == "__main__":
    main()
