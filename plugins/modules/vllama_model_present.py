#!/usr/bin/python
"""Which of the models the controller copies are not in the host's store yet.

A single file is in the store once it exists at its final path: it only gets there by a rename
after its check. A folder (a model folder, a Hugging Face snapshot) is in the store when every
file the controller listed is there with its size; anything less (an interrupted copy into a ZFS
dataset's mount point) is copied again. Contents are hashed by the check that follows, on every run.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_model_present
short_description: List the copied models a host's store does not hold yet
description:
  - Which of the models the controller copies are not in the host's store yet.
options:
  sources:
    description:
      - The role's model sources by instance name, as vllama_sources resolves them (each with
        C(model.mode), C(model.store_path) and, for folders, C(model.files)).
    type: dict
    required: true
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Find the models this host does not have yet.
  vllama.provision.vllama_model_present:
    sources: "{{ _vllama_sources }}"
  register: __vllama_present
"""

RETURN = r"""
missing:
  description:
    - Names of the instances whose copied model is not in the store yet (one name per model
      content when instances share it).
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule


def present(model):
    """Whether a copied model is complete at its final place."""
    final = model.get("store_path") or ""
    files = model.get("files") or []
    if not files:
        return os.path.isfile(final)
    for entry in files:
        target = os.path.join(final, str(entry.get("path") or ""))
        if not os.path.isfile(target) or os.path.getsize(target) != int(entry.get("size", -1)):
            return False
    return True


def main():
    module = AnsibleModule(argument_spec={"sources": {"type": "dict", "required": True}},
                           supports_check_mode=True)
    missing, places = [], set()
    for name, source in sorted(module.params["sources"].items()):
        model = source.get("model") or {}
        # Instances sharing one model content copy it once.
        if model.get("mode") != "copy" or model.get("store_path") in places:
            continue
        places.add(model.get("store_path"))
        if not present(model):
            missing.append(name)
    module.exit_json(changed=False, missing=missing)


if __name__ == "__main__":
    main()
