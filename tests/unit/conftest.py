"""Fixtures shared by the unit tests."""

import sys

from stand_in_hub import hub

from vllama_provision import paths

# Modules loaded from their files import their module_utils as Ansible does
# (ansible_collections.vllama.provision.plugins.module_utils...): make the collection importable.
sys.path.insert(0, str(paths.collections_dir()))

__all__ = ["hub"]
