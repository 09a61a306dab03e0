"""The controller's state folder, exactly as the CLI resolves it (vllama_provision.paths):
$VLLAMA_STATE_DIR, else /var/lib/vllama-provision for root, else the user's XDG state folder.
The role keeps the controller's private API key copies and fetched wheels there, so `lab down`,
`verify` and the role agree on one place also when Ansible runs without the CLI (molecule)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: vllama_state_dir
short_description: The controller's vllama-provision state folder
description:
  - The controller's state folder as the CLI resolves it (C(VLLAMA_STATE_DIR), else
    /var/lib/vllama-provision for root, else the user's XDG state folder).
"""

from ansible.plugins.lookup import LookupBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision import paths
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        require_package(VLLAMA_IMPORT_ERROR)
        return [str(paths.state_dir())]
