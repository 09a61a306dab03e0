#!/usr/bin/python
"""Releases on a host: read them, switch between them, record the outcome, collect garbage.

An instance's folder holds ``releases/<id>/`` (engine and model links, manifest.json,
created.json, FAILED after a failed attempt), ``current`` (the release the unit runs) and
``previous`` (the release ``current`` replaced, the default target of a rollback). Every switch
and its outcome is appended to the host's history file, so a run killed between switch and
verify leaves a ``switched`` record that the next run finishes: it restarts the engine and
verifies it, and rolls back to the record's ``from`` if that fails.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_release
short_description: Inspect, switch, record and prune vllama releases
description:
  - Releases on a host, read them, switch between them, record the outcome, collect garbage.
options:
  operation:
    description:
      - C(inspect) reads every instance's releases, links, service state and pending switch.
      - C(switch) points C(current) at I(release) (atomically) and C(previous) at the old one.
      - C(record) appends I(records) to the history file.
      - C(prune) keeps the newest I(keep) releases per instance (never C(current),
        C(previous) or a pending switch's releases) and removes engine environments and model
        copies no remaining release references, and temporary files of killed runs.
    type: str
    choices: [inspect, switch, record, prune]
    required: true
  install_root:
    description: Root of engines/, instances/ and wheelhouse/.
    type: path
    required: true
  models_root:
    description: The plain-folder model store (for C(prune)).
    type: path
  keep_aside:
    description:
      - Damaged store copies moved aside by this run (C(.damaged-NAME-TIME), from
        M(vllama.provision.vllama_model_check)), kept for inspection through it; C(prune) removes
        every other one under O(models_root).
    type: list
    elements: path
    default: []
  history:
    description: The history file (JSON list of records).
    type: path
    required: true
  instances:
    description: Instance names to act on (default every instance on the host).
    type: list
    elements: str
  units:
    description:
      - Unit name per instance (for C(inspect)); default C(vllama-<name>.service).
      - C(system/LABEL) names a launchd job (a Mac), read with C(launchctl print).
    type: dict
  launchctl:
    description: launchctl's path on a Mac (the tests' stand-in Mac keeps an imitation elsewhere).
    type: path
    default: /bin/launchctl
  name:
    description: The instance to switch (C(switch)).
    type: str
  release:
    description: The release to switch to (C(switch)).
    type: str
  previous:
    description: >-
      What C(previous) points at after a C(switch); default the release C(current) pointed at.
      A rollback inside a failed run passes the value from before the run.
    type: str
  report:
    description: Also return C(report_releases) (instance -> current release) for the run report.
    type: bool
    default: false
  probe:
    description: >-
      With C(inspect): also ask each running instance's endpoint now (readiness, and
      /v1/models with the key from I(key_dir)), read the host lock and the history's tail.
    type: bool
    default: false
  key_dir:
    description: Folder of the instances' API key files (C(<name>.key)), for I(probe).
    type: path
  lock:
    description: The host lock file, for I(probe).
    type: path
  records:
    description: >-
      History records to append (C(record), and after the links change for C(switch));
      time is added.
    type: list
    elements: dict
  keep:
    description: Releases to keep per instance besides current and previous (C(prune)).
    type: int
    default: 3
  history_limit:
    description: Records kept in the history file.
    type: int
    default: 1000
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Read the releases of every instance.
  vllama.provision.vllama_release:
    operation: inspect
    install_root: /opt/vllama
    history: /var/lib/vllama/history.json
"""

RETURN = r"""
instances:
  description: Per instance (C(inspect)) current, previous, releases, pending, service state.
  returned: inspect
  type: dict
removed:
  description: Paths removed (C(prune)).
  returned: prune
  type: list
freed_bytes:
  description: Bytes freed (C(prune)).
  returned: prune
  type: int
"""

import contextlib
import json
import os
import shutil
import time
import urllib.error

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import ConnectionError as UrlError
from ansible.module_utils.urls import open_url
from ansible_collections.vllama.provision.plugins.module_utils.vllama_releases import (
    LAUNCHCTL,
    inspect_instances,
    instance_names,
    link_target,
    pending_switch,
    read_history,
    read_json,
    release_info,
    write_json_atomic,
)


def inspect(params):
    LAUNCHCTL["path"] = params.get("launchctl") or LAUNCHCTL["path"]
    history = read_history(params["history"])
    out = inspect_instances(params["install_root"], history, params.get("instances"),
                            params.get("units") or {})
    result = {"instances": out}
    if params.get("probe"):
        for name, data in out.items():
            data["endpoint"] = (_probe(name, data, params.get("key_dir"))
                                if data["active"] == "active" else
                                {"healthy": False, "detail": f"service {data['active']}"})
        result["lock"] = read_json(params["lock"], None) if params.get("lock") else None
        if params.get("lock") and os.path.exists(params["lock"]) and result["lock"] is None:
            result["lock"] = {"unreadable": True}
        result["history"] = history[-20:]
    if params.get("report"):
        result["report_releases"] = {name: data["current"] for name, data in out.items()}
    return result


def _get(url, key, timeout=5):
    headers = {"Authorization": "Bearer " + key} if key else {}
    try:
        with open_url(url, headers=headers, http_agent="vllama-provision",
                      timeout=timeout) as resp:
            return resp.status, resp.read(65536).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (UrlError, OSError, ValueError) as exc:
        return 0, str(getattr(exc, "reason", exc))


def _probe(name, data, key_dir):
    """Is the instance's current release answering now, and does it list its served name?"""
    rel = next((r for r in data["releases"] if r["id"] == data["current"]), None)
    if not rel or not rel.get("local_endpoint"):
        return {"healthy": False, "detail": "no current release with a known endpoint"}
    key = ""
    try:
        with open(os.path.join(key_dir or "", name + ".key"), encoding="utf-8") as handle:
            key = handle.read().strip()
    except OSError:
        pass
    readiness = rel.get("readiness") or {"path": "/v1/models", "auth": True}
    base = rel["local_endpoint"].rstrip("/")
    status, detail = _get(base + readiness["path"], key if readiness.get("auth") else None)
    if status != readiness.get("expect_status", 200):
        return {"healthy": False, "detail": f"{readiness['path']}: {status or detail}"}
    status, body = _get(base + "/v1/models", key)
    try:
        served = sorted(m.get("id", "") for m in json.loads(body).get("data") or [])
    except (ValueError, AttributeError):
        served = []
    if status != 200 or rel["served_name"] not in served:
        return {"healthy": False, "detail": f"/v1/models: HTTP {status}, lists {served}"}
    return {"healthy": True, "detail": f"ready, serves {rel['served_name']}"}


def switch(params):
    name, release = params["name"], params["release"]
    base = os.path.join(params["install_root"], "instances", name)
    if not os.path.isfile(os.path.join(base, "releases", release, "manifest.json")):
        raise ValueError(f"{name}: release {release} is not prepared on this host "
                         f"(no {base}/releases/{release}/manifest.json)")
    current = os.path.join(base, "current")
    old = link_target(current)
    if old == release:
        return {"changed": False, "old": old}
    previous = params.get("previous")
    previous = old if previous is None else previous
    for link, target in (("current", release), ("previous", previous)):
        if not target:
            continue
        path = os.path.join(base, link)
        tmp = path + ".switch"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(f"releases/{target}", tmp)
        os.replace(tmp, path)
    if params.get("records"):
        record(params)
    return {"changed": True, "old": old}


def record(params):
    history = read_history(params["history"])
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for entry in params.get("records") or []:
        history.append({"time": stamp, **entry})
    write_json_atomic(params["history"], history[-params["history_limit"]:])
    return {"changed": bool(params.get("records"))}


def _size(path):
    total = 0
    if os.path.islink(path) or os.path.isfile(path):
        try:
            return os.lstat(path).st_size
        except OSError:
            return 0
    for folder, _dirs, files in os.walk(path):
        for file in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, file)).st_size
    return total


def _remove(path, removed, check):
    size = _size(path)
    if not check:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    removed.append(path)
    return size


def _store_key(name):
    """Store folders are named by content (sha256) or a pinned revision (a commit): anything
    else under the models root is the operator's and never collected."""
    return len(name) in (40, 64) and all(c in "0123456789abcdef" for c in name)


def prune(params, check):
    install_root, keep = params["install_root"], params["keep"]
    history = read_history(params["history"])
    removed, freed = [], 0
    referenced_engines, referenced_models = set(), set()
    for name in instance_names(install_root, None):
        base = os.path.join(install_root, "instances", name)
        releases_dir = os.path.join(base, "releases")
        if not os.path.isdir(releases_dir):
            continue
        for leftover in ("current.switch", "previous.switch"):
            if os.path.lexists(os.path.join(base, leftover)):
                freed += _remove(os.path.join(base, leftover), removed, check)
        ordered = sorted((release_info(releases_dir, r) for r in os.listdir(releases_dir)),
                         key=lambda r: (r["created"], r["mtime"]), reverse=True)
        protected = {link_target(os.path.join(base, "current")),
                     link_target(os.path.join(base, "previous"))}
        pending = pending_switch(history, name)
        if pending:
            protected |= {pending["from"], pending["to"]}
        kept = [r["id"] for r in ordered if r["id"] not in protected][:keep]
        protected |= set(kept)
        for rel in ordered:
            path = os.path.join(releases_dir, rel["id"])
            if rel["id"] in protected:
                for link, refs in (("engine", referenced_engines), ("model", referenced_models)):
                    target = os.path.join(path, link)
                    if os.path.islink(target):
                        refs.add(os.path.realpath(target))
                continue
            freed += _remove(path, removed, check)
    engines = os.path.join(install_root, "engines")
    for entry in sorted(os.listdir(engines)) if os.path.isdir(engines) else []:
        path = os.path.join(engines, entry)
        if os.path.realpath(path) not in referenced_engines:
            freed += _remove(path, removed, check)
    models_root = params.get("models_root")
    keep_aside = {os.path.normpath(p) for p in params.get("keep_aside") or []}

    def collectable_aside(name, path):
        """A damaged copy moved aside by an earlier run (this run's stay for inspection)."""
        return name.startswith(".damaged-") and os.path.normpath(path) not in keep_aside

    if models_root and os.path.isdir(models_root):
        for slug in sorted(os.listdir(models_root)):
            slug_dir = os.path.join(models_root, slug)
            if not os.path.isdir(slug_dir) or os.path.ismount(slug_dir):
                continue
            removed_here = len(removed)
            for key in sorted(os.listdir(slug_dir)):
                path = os.path.join(slug_dir, key)
                if not os.path.isdir(path) or os.path.ismount(path):
                    continue
                if collectable_aside(key, path):
                    freed += _remove(path, removed, check)  # a damaged folder model's copy
                    continue
                real = os.path.realpath(path)
                if _store_key(key) and not any(
                        ref == real or ref.startswith(real + "/") or real.startswith(ref + "/")
                        for ref in referenced_models):
                    freed += _remove(path, removed, check)
                    continue
                for file in os.listdir(path):
                    inner = os.path.join(path, file)
                    if file.startswith(".partial-") or collectable_aside(file, inner):
                        freed += _remove(inner, removed, check)
            if not check and len(removed) > removed_here and not os.listdir(slug_dir):
                os.rmdir(slug_dir)
    return {"changed": bool(removed), "removed": removed, "freed_bytes": freed}


def main():
    module = AnsibleModule(
        argument_spec={
            "operation": {"type": "str", "required": True,
                          "choices": ["inspect", "switch", "record", "prune"]},
            "install_root": {"type": "path", "required": True},
            "models_root": {"type": "path"},
            "keep_aside": {"type": "list", "elements": "path", "default": []},
            "history": {"type": "path", "required": True},
            "instances": {"type": "list", "elements": "str"},
            "units": {"type": "dict"},
            "launchctl": {"type": "path", "default": "/bin/launchctl"},
            "name": {"type": "str"},
            "release": {"type": "str"},
            "records": {"type": "list", "elements": "dict"},
            "previous": {"type": "str"},
            "report": {"type": "bool", "default": False},
            "probe": {"type": "bool", "default": False},
            "key_dir": {"type": "path"},
            "lock": {"type": "path"},
            "keep": {"type": "int", "default": 3},
            "history_limit": {"type": "int", "default": 1000},
        },
        required_if=[("operation", "switch", ("name", "release"))],
        supports_check_mode=True,
    )
    params, operation = module.params, module.params["operation"]
    try:
        if operation == "inspect":
            module.exit_json(changed=False, **inspect(params))
        if module.check_mode and operation != "prune":
            module.exit_json(changed=operation != "inspect")
        if operation == "switch":
            module.exit_json(**switch(params))
        if operation == "record":
            module.exit_json(**record(params))
        module.exit_json(**prune(params, module.check_mode))
    except (OSError, ValueError) as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
