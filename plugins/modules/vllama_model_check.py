#!/usr/bin/python
"""Check a staged model file: its full sha256, and for GGUF files the header.

A file corrupted anywhere (not only in its header) fails the hash; a GGUF whose header is not
what llama.cpp can serve (bad magic, unknown version, no architecture, no chat template) is
refused with the reason, before any release points at it.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_model_check
short_description: Verify a staged model file (sha256, GGUF header)
description:
  - Check a staged model file, its full sha256, and for GGUF files the header.
options:
  path:
    description: File to check.
    type: path
    required: true
  sha256:
    description: Expected sha256 (hex); empty to only compute it.
    type: str
    default: ""
  gguf:
    description: Also parse and check the GGUF header.
    type: bool
    default: false
  require_chat_template:
    description: Refuse a GGUF without tokenizer.chat_template.
    type: bool
    default: true
  remove_on_failure:
    description: Delete the file (or folder) when it is refused (for copies under a temporary name).
    type: bool
    default: false
  files:
    description:
      - For a model folder, every file it must hold (C(path) relative to the folder, C(sha256),
        C(size)); each is checked. Empty for a single file.
    type: list
    elements: dict
    default: []
  into:
    description:
      - Once checked, move the file or folder here (its final place in the store). A folder
        moved onto an existing folder (a ZFS dataset's mount point) is moved in file by file.
    type: path
    default: ""
  record:
    description:
      - Once checked, record the model's identity (size, mtime and inode of each of its files)
        in this JSON file, so later runs compare that instead of hashing the content again.
    type: path
    default: ""
  quarantine:
    description:
      - A store copy that fails its check is moved aside (to C(.damaged-NAME-TIME) beside it,
        kept for inspection) instead of failing the task, so it can be staged again from its
        source; the result says C(quarantined).
      - With O(zfs_parent), a copy in one of the tool's model datasets moves aside with its
        dataset, which is renamed C(NAME-damaged-TIME), mounted at C(.damaged-FOLDER-TIME)
        beside its old mount point and marked C(org.vllama:damaged); the next apply creates a
        fresh dataset. The damaged dataset is kept for inspection through the run that
        quarantined it and destroyed by a later run's garbage collection.
    type: bool
    default: false
  units:
    description:
      - Engine units that may read the copy. On ZFS, those whose process holds the damaged
        copy are stopped before its dataset is moved aside (a dataset in use cannot be
        renamed); the run phase starts them on the copy staged in its place.
    type: list
    elements: str
    default: []
  zfs_parent:
    description:
      - The parent of the tool's model datasets (C(vllama_zfs_dataset)); empty when the store
        is plain folders.
    type: str
    default: ""
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Check the staged model.
  vllama.provision.vllama_model_check:
    path: /tank/ai/models/x/abc/model.gguf
    sha256: abc...
    gguf: true
"""

RETURN = r"""
quarantined:
  description: Where the damaged copy was moved (its new mount folder, on ZFS).
  returned: when a damaged copy was moved aside
  type: str
stopped:
  description: The engine units stopped to move the damaged dataset aside.
  returned: when a damaged copy on ZFS was moved aside with its dataset
  type: list
  elements: str
quarantined_dataset:
  description: The damaged copy's dataset, renamed.
  returned: when a damaged copy on ZFS was moved aside with its dataset
  type: str
sha256:
  description: The file's sha256.
  returned: always
  type: str
gguf:
  description: GGUF header facts (version, architecture, context_length, chat_template).
  returned: when gguf is true
  type: dict
"""

import hashlib
import json
import os
import shutil
import struct
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vllama.provision.plugins.module_utils.vllama_gguf import (
    GGUFError,
    read_gguf_header,
)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def check_hf_folder(refuse, path):
    """A Hugging Face model folder: config.json plus at least one weight file."""
    names = sorted(os.listdir(path))
    if "config.json" not in names:
        refuse(f"{path}: refused: a model folder needs config.json (a Hugging Face model "
               "folder); it has " + (", ".join(names[:8]) or "nothing"))
    weights = [n for n in names if n.endswith(WEIGHT_SUFFIXES)]
    if not weights:
        refuse(f"{path}: refused: the model folder has no weights (*.safetensors or *.bin)")
    size = sum(os.path.getsize(os.path.join(path, n)) for n in names
               if os.path.isfile(os.path.join(path, n)))
    return {"changed": False, "path": path, "size": size, "sha256": "", "folder": True,
            "weights": weights}


def check_listed_files(path, files):
    """'' when the folder holds every listed file with its size and sha256, else what is wrong."""
    for entry in files:
        rel = str(entry.get("path") or "")
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            return f"the file list names an unsafe path {rel!r}"
        target = os.path.join(path, rel)
        if not os.path.isfile(target):
            return f"{rel} is missing"
        size = os.path.getsize(target)
        if size != int(entry.get("size", -1)):
            return f"{rel} has {size} bytes, expected {entry.get('size')}"
        digest = sha256_of(target)
        if digest != str(entry.get("sha256", "")).lower():
            return f"{rel}: sha256 is {digest}, expected {entry.get('sha256')}"
    return ""


def move_into(path, into):
    """Rename the checked file or folder to its final place; a folder whose final place already
    exists (the mount point of a ZFS dataset) is moved in file by file, then removed."""
    if not os.path.lexists(into) or not os.path.isdir(path):
        os.replace(path, into)
        return
    for folder, _dirs, names in os.walk(path):
        dest = os.path.join(into, os.path.relpath(folder, path))
        os.makedirs(dest, exist_ok=True)
        for name in names:
            os.replace(os.path.join(folder, name), os.path.join(dest, name))
    shutil.rmtree(path)


def identity(path):
    """Size, mtime (ns) and inode of a file, or of every file under a folder ('' = the file)."""
    if not os.path.isdir(path):
        st = os.stat(path)
        return {"": [st.st_size, st.st_mtime_ns, st.st_ino]}
    found = {}
    for folder, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(folder, name)
            st = os.stat(full)
            found[os.path.relpath(full, path)] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return found


def write_identity(record, path):
    os.makedirs(os.path.dirname(record), mode=0o755, exist_ok=True)
    tmp = f"{record}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"path": path, "files": identity(path)}, handle, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, record)


MARK_CONTENT = "org.vllama:content"
MARK_DAMAGED = "org.vllama:damaged"


def _stamp():
    return time.strftime("%Y%m%dT%H%M%S")


def quarantine(path):
    """Move a damaged store copy aside; returns where, or '' when it cannot be moved."""
    folder, name = os.path.split(path.rstrip("/"))
    aside = os.path.join(folder, f".damaged-{name}-{_stamp()}")
    try:
        os.rename(path, aside)
    except OSError:
        return ""
    return aside


def model_dataset(module, parent, path):
    """(name, mountpoint) of the tool's model dataset under ``parent`` holding ``path``."""
    argv = ["zfs", "list", "-H", "-r", "-t", "filesystem", "-o",
            f"name,mountpoint,{MARK_CONTENT}", parent]
    rc, out, _err = module.run_command(argv)
    best = ("", "")
    for line in out.splitlines() if rc == 0 else []:
        fields = line.split("\t")
        if len(fields) != 3 or fields[2] in ("", "-") or not fields[1].startswith("/"):
            continue
        mount = fields[1].rstrip("/")
        if (path == mount or path.startswith(mount + "/")) and len(mount) > len(best[1]):
            best = (fields[0], mount)
    return best


def _holds(pid, mount):
    """Whether process ``pid`` maps or has open a file under ``mount``."""
    prefix = mount.rstrip("/") + "/"
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as handle:
            if any(prefix in line for line in handle):
                return True
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
    except OSError:
        return False
    return False


def stop_holders(module, units, mount):
    """Stop the engine units whose process holds the damaged copy (a dataset in use cannot be
    renamed); the run phase starts them again on the copy staged in its place."""
    stopped = []
    for unit in units:
        rc, out, _err = module.run_command(["systemctl", "show", "-p", "MainPID", "--value",
                                            unit])
        pid = out.strip() if rc == 0 else ""
        if pid.isdigit() and int(pid) > 0 and _holds(pid, mount):
            module.run_command(["systemctl", "stop", unit])
            stopped.append(unit)
    return stopped


def quarantine_dataset(module, name, mount):
    """Rename a damaged model dataset aside and mount it beside its old place; returns
    (new name, new mount folder, '') or ('', '', why ZFS refused)."""
    stamp = _stamp()
    folder, base = os.path.split(mount)
    aside_name = f"{name}-damaged-{stamp}"
    aside_mount = os.path.join(folder, f".damaged-{base}-{stamp}")
    # A file closed a moment ago (this module's own read, a stopped engine) may keep a FUSE
    # mount (zfs-fuse) busy briefly: the rename is retried for a few seconds.
    deadline = time.monotonic() + 20
    for argv, needed in ((["zfs", "rename", name, aside_name], True),
                         (["zfs", "set", f"mountpoint={aside_mount}", aside_name], True),
                         (["zfs", "set", f"{MARK_DAMAGED}={stamp}", aside_name], True),
                         (["zfs", "mount", aside_name], False)):
        while True:
            rc, out, err = module.run_command(argv)
            if rc == 0 or "busy" not in err or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if rc != 0 and needed:
            return "", "", f"`{' '.join(argv)}` failed: {' '.join((err or out).split())}"
    return aside_name, aside_mount, ""


def main():
    module = AnsibleModule(argument_spec={
        "path": {"type": "path", "required": True},
        "sha256": {"type": "str", "default": ""},
        "gguf": {"type": "bool", "default": False},
        "require_chat_template": {"type": "bool", "default": True},
        "remove_on_failure": {"type": "bool", "default": False},
        "files": {"type": "list", "elements": "dict", "default": []},
        "into": {"type": "path", "default": ""},
        "record": {"type": "path", "default": ""},
        "quarantine": {"type": "bool", "default": False},
        "zfs_parent": {"type": "str", "default": ""},
        "units": {"type": "list", "elements": "str", "default": []},
    }, supports_check_mode=True)
    path = module.params["path"]
    into = module.params["into"]

    def refuse(msg, **extra):
        if module.params["quarantine"] and not module.check_mode:
            dataset, mount = ("", "")
            if module.params["zfs_parent"]:
                dataset, mount = model_dataset(module, module.params["zfs_parent"], path)
            why, stopped = "", []
            if dataset:
                stopped = stop_holders(module, module.params["units"], mount)
                aside_name, aside, why = quarantine_dataset(module, dataset, mount)
                if aside_name:
                    module.exit_json(changed=True, quarantined=aside, stopped=stopped,
                                     quarantined_dataset=aside_name, path=path,
                                     msg=f"{msg}; the damaged dataset {dataset} was renamed "
                                         f"{aside_name} (mounted at {aside})")
            aside = "" if dataset else quarantine(path)
            if aside:
                module.exit_json(changed=True, quarantined=aside, path=path,
                                 msg=f"{msg}; the damaged copy was moved aside to {aside}")
            msg += (f"; its dataset {dataset} could not be moved aside: {why} (engines stopped "
                    f"first: {', '.join(stopped) or 'none held it'})" if dataset
                    else "; the damaged copy could not be moved aside (read-only store)")
        if module.params["remove_on_failure"] and not module.check_mode:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            msg += "; the copy was removed"
        module.fail_json(msg=msg, **extra)

    def done(result):
        if into and not module.check_mode:
            move_into(path, into)
            result.update(changed=True, path=into)
        if module.params["record"] and not module.check_mode:
            write_identity(module.params["record"], result.get("path") or path)
        module.exit_json(**result)

    if module.params["quarantine"] and not os.path.lexists(path):
        # Moved aside already (another instance reads the same copy): staged again below.
        module.exit_json(changed=False, path=path, missing=True,
                         msg=f"{path} is not there: it is staged again")
    if module.params["files"]:
        if not os.path.isdir(path):
            module.fail_json(msg=f"model folder {path} does not exist on the host")
        problem = check_listed_files(path, module.params["files"])
        if problem:
            refuse(f"{path}: refused: {problem} (the copy is corrupted or not the model the "
                   "controller listed)")
        result = check_hf_folder(refuse, path)
        result["files"] = len(module.params["files"])
        done(result)

    if os.path.isdir(path) and not module.params["gguf"]:
        # A Hugging Face folder (vLLM): its files are checked when they are downloaded; here
        # only that it is one (config.json and weights), so a wrong path fails before a start.
        done(check_hf_folder(refuse, path))
    if not os.path.isfile(path):
        module.fail_json(msg=f"model file {path} does not exist on the host")
    result = {"changed": False, "path": path, "size": os.path.getsize(path)}
    if module.params["gguf"]:
        try:
            result["gguf"] = read_gguf_header(path)
        except (GGUFError, OSError, struct.error) as exc:
            refuse(f"{path}: refused: {exc}", **result)
        if module.params["require_chat_template"] and not result["gguf"]["chat_template"]:
            refuse(f"{path}: refused: the GGUF has no chat template "
                   "(tokenizer.chat_template); chat completions need one", **result)
    result["sha256"] = sha256_of(path)
    expected = module.params["sha256"].lower()
    if expected and result["sha256"] != expected:
        refuse(f"{path}: refused: sha256 is {result['sha256']}, expected {expected} "
               "(the file is corrupted or not the pinned model)", **result)
    done(result)


if __name__ == "__main__":
    main()
