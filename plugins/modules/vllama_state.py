#!/usr/bin/python
"""Compare a host with its whole desired state in one round trip, and say which phases must run.

The role's fast path: under the host lock, everything a converged host must have is checked at
once (the service user and folders, each engine's environment, each stored model's identity,
each release's folder, links and manifest, every rendered file by content hash, mode and owner,
the key files' presence, owner and mode, the ``current`` link, the units' state, enablement and
pending daemon-reload), and every difference is reported by name. Only the phases whose checks
found a difference run afterwards; a host with no difference runs none of them.

A key file whose mode lets others read it is reported as a possible exposure: the configure
phase repairs its mode, and the run suggests ``vllama-provision key rotate``.

Model identity stays cheap on multi-gigabyte models: the size, mtime and inode recorded when the
model was checked (the record ``vllama_model_check`` writes) are compared, not the content; a
missing or different record sends the install phase to check the content again.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_state
short_description: Compare a vllama host with its desired state and name the phases to run
description:
  - Checks the whole desired state of a host in one round trip and returns every difference
    and the phases (install, configure, run) that must run to repair them.
options:
  desired:
    description:
      - The desired state, as the C(vllama_desired) filter builds it from the plan and the
        sources (service user, folders, and per instance its release, files, links, manifest,
        engine, model and keys).
    type: dict
    required: true
  history:
    description: The host's history file (an unfinished switch must be finished by a run).
    type: path
    required: true
  lock_path:
    description:
      - Take the host lock (this file) first, in the same round trip as the comparison, as
        M(vllama.provision.vllama_lock) takes it; release it with that module. Empty takes no
        lock.
    type: path
    default: ""
  lock_wait:
    description: Seconds to wait for another live run's lock before refusing the host.
    type: int
    default: 0
  break_lock:
    description: Replace a lock held by another controller's run.
    type: bool
    default: false
  lock:
    description:
      - Internal, set by the action plugin from O(lock_path) (C(path), C(owner),
        C(replace_run_id), C(check_mode)). When another run holds the lock, nothing is compared
        and the result has C(acquired=false) and C(held_by).
    type: dict
    default: {}
  release:
    description:
      - With O(lock_path), when to release the lock in the same round trip. V(never) keeps it
        for the phases that follow; V(unchanged) releases it when nothing differs (no phase
        must run), so a converged host needs no second round trip to unlock it; V(always)
        releases it whatever differs (the converged check of M(vllama.provision.vllama_converged),
        after which a changed host goes through the whole play). The result has
        C(released).
    type: str
    choices: [never, unchanged, always]
    default: never
  facts:
    description:
      - Gather the host's facts first, in the same round trip, as
        M(vllama.provision.vllama_host_facts) does with these options (C(pynvml_path),
        C(sysfs_root), C(macos_command_root)); the result has C(vllama_facts) and
        C(facts_digest). Empty gathers none.
    type: dict
    default: {}
  facts_digest:
    description:
      - With O(facts), the digest of the facts the desired state was planned from. When the
        host's facts differ, nothing is locked or compared and the result has
        C(facts_changed=true).
    type: str
    default: ""
  key_digests:
    description:
      - The key each instance's key file must hold, as the C(vllama_key_digests) filter gives
        it (C(salt), and per instance C(digest) and C(source)), a salted PBKDF2 digest, never
        the key. Instances left out are not compared by content.
    type: dict
    default: {}
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Take the host lock and compare this host with its desired state.
  vllama.provision.vllama_state:
    desired: "{{ _vllama_plan | vllama.provision.vllama_desired(_vllama_sources) }}"
    history: /var/lib/vllama/history.json
    lock_path: /var/lib/vllama/lock
    lock_wait: 300
  register: __vllama_state

- name: Compare this host with its desired state.
  vllama.provision.vllama_state:
    desired: "{{ _vllama_plan | vllama.provision.vllama_desired(_vllama_sources) }}"
    history: /var/lib/vllama/history.json
  register: __vllama_state
"""

RETURN = r"""
acquired:
  description: Whether this run took the host lock (with C(lock_path)).
  returned: with lock_path
  type: bool
released:
  description: Whether the lock was released again in this round trip (O(release)).
  returned: with lock_path
  type: bool
vllama_facts:
  description: The host's facts (with O(facts)).
  returned: with facts
  type: dict
facts_digest:
  description: The digest of the host's facts (with O(facts)).
  returned: with facts
  type: str
facts_changed:
  description: The host's facts differ from O(facts_digest); nothing was locked or compared.
  returned: with facts and facts_digest
  type: bool
differences:
  description: What differs from the desired state, one sentence each, prefixed by the instance.
  returned: always
  type: list
  elements: str
phases:
  description: The phases that must run (a subset of install, configure, run, in that order).
  returned: always
  type: list
  elements: str
exposed_keys:
  description: Key files others could read (their mode was opened); rotate those keys.
  returned: always
  type: list
  elements: str
models_to_check:
  description: Instances whose stored model changed since its check, or was never recorded
    (their content is checked again).
  returned: always
  type: list
  elements: str
instances:
  description: The releases each instance has (as the inspect operation of vllama_release).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vllama.provision.plugins.module_utils import vllama_host_facts
from ansible_collections.vllama.provision.plugins.module_utils.vllama_lock import acquire, release
from ansible_collections.vllama.provision.plugins.module_utils.vllama_state import compare


def main():
    module = AnsibleModule(argument_spec={
        "desired": {"type": "dict", "required": True},
        "history": {"type": "path", "required": True},
        "key_digests": {"type": "dict", "default": {}, "no_log": True},
        "lock_path": {"type": "path", "default": ""},
        "lock_wait": {"type": "int", "default": 0},
        "break_lock": {"type": "bool", "default": False},
        "lock": {"type": "dict", "default": {}},
        "release": {"type": "str", "default": "never",
                    "choices": ["never", "unchanged", "always"]},
        "facts": {"type": "dict", "default": {}},
        "facts_digest": {"type": "str", "default": ""},
    }, supports_check_mode=True)
    gathered = {}
    if module.params["facts"]:
        # The facts first: a desired state planned from other facts is not compared.
        options = module.params["facts"]
        facts = vllama_host_facts.gather(options.get("pynvml_path") or "",
                                         options.get("sysfs_root") or "/sys",
                                         options.get("macos_command_root") or "")
        gathered = {"vllama_facts": facts, "facts_digest": vllama_host_facts.digest(facts)}
        expected = module.params["facts_digest"]
        if expected and expected != gathered["facts_digest"]:
            module.exit_json(changed=False, facts_changed=True, **gathered)
    lock = module.params["lock"]
    if lock:
        # The comparison runs under the host lock: taken here, in the same round trip.
        taken = acquire(lock["path"], lock["owner"], lock.get("replace_run_id") or "",
                        bool(lock.get("check_mode")))
        if not taken["acquired"]:
            module.exit_json(changed=False, **taken, **gathered)
    else:
        taken = {}
    try:
        result = compare(module.params["desired"], module.params["history"],
                         module.params["key_digests"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if lock and module.params["release"] == "always":
            release(lock["path"], lock["owner"], bool(lock.get("check_mode")))
        module.fail_json(msg=f"cannot compare the host with its desired state: {exc}")
    if lock:
        when = module.params["release"]
        taken["released"] = when == "always" or (when == "unchanged" and not result["phases"])
        if taken["released"]:
            release(lock["path"], lock["owner"], bool(lock.get("check_mode")))
    module.exit_json(changed=False, **taken, **result, **gathered)


if __name__ == "__main__":
    main()
