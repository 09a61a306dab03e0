"""The controller's state folder, exactly as the CLI resolves it (vllama_provision.paths):
$VLLAMA_STATE_DIR, else /var/lib/vllama-provision for root, else the user's XDG state folder.
The role keeps the controller's private API key copies and fetched wheels there, so `lab down`,
`verify` and the role agree on one place also when Ansible runs without the CLI (molecule)."""

from __future__ import annotations

from ansible.plugins.lookup import LookupBase

from vllama_provision import paths

DOCUMENTATION = r"""
name: vllama_state_dir
short_description: The controller's vllama-provision state folder
"""


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        return [str(paths.state_dir())]
