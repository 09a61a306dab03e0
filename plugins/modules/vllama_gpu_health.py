#!/usr/bin/python
"""GPU health of an NVIDIA host, read-only: what `verify` and `status` report.

Three checks, each the remedy of a known failure: NVML initialises; the loaded kernel module,
NVML and the installed user-space library agree on one driver version (the classic "Driver/library
version mismatch" after an unattended upgrade without a reboot); an nvidia module is installed for
the running kernel (a kernel upgrade whose DKMS build failed). A host with nothing NVIDIA is
reported as not applicable and healthy.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_gpu_health
short_description: Check the NVIDIA driver health of a host (read-only)
description:
  - Returns (and sets as a fact) C(vllama_gpu_health) with C(applicable), C(healthy), C(checks).
  - Never fails by itself; the caller decides (C(verify) fails an unhealthy GPU host).
options:
  pynvml_path:
    description: Folder to import C(pynvml) from instead of the bundled copy (tests).
    type: str
    default: ""
  sysfs_root:
    description: Where sysfs is mounted (a fake tree in tests).
    type: str
    default: /sys
  modules_root:
    description: Where kernel modules are installed.
    type: str
    default: /lib/modules
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Check the GPU health of this host.
  vllama.provision.vllama_gpu_health:
  register: health
"""

RETURN = r"""
vllama.provision.vllama_gpu_health:
  description: C(applicable), C(healthy), C(checks) (C(name), C(ok), C(detail) each), versions read.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vllama.provision.plugins.module_utils import vllama_nvidia_host as host


def main():
    module = AnsibleModule(argument_spec={
        "pynvml_path": {"type": "str", "default": ""},
        "sysfs_root": {"type": "str", "default": "/sys"},
        "modules_root": {"type": "str", "default": "/lib/modules"},
    }, supports_check_mode=True)
    health = host.gpu_health(module.params["pynvml_path"], module.params["sysfs_root"],
                             module.params["modules_root"])
    module.exit_json(changed=False, vllama_gpu_health=health,
                     ansible_facts={"vllama_gpu_health": health})


if __name__ == "__main__":
    main()
