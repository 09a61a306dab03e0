"""Preflight of a ZFS model store: read the pool on the host, judge it on the controller.

Runs the host module ``vllama_zfs`` (state facts: pool version, feature flags, known properties,
the state of each model dataset this run needs) and refuses the host, before anything changes,
when the pool is missing, a property value is one the pool does not support, a dataset is not
the tool's, or a mount folder is taken (rules: ``vllama_provision.zfs.preflight_refusals``).
Sets ``_vllama_zfs``: the model datasets to create and seal. Hosts without
``vllama_zfs_dataset`` are skipped.

A pool that exists but is not imported (a host rebuilt on its surviving disks) is imported
when the controller's record says this inventory host last used it (the pool's GUID, recorded
by every run that found it imported); otherwise the host is refused with the ``zpool import``
command to run (rules: ``vllama_provision.zfs.pool_import``).
"""

from __future__ import annotations

from dataclasses import asdict

from ansible.plugins.action import ActionBase
from ansible_collections.vllama.provision.plugins.plugin_utils.vllama_package import require_package

try:  # the vllama-provision package, in exactly this collection's version (checked at run)
    from vllama_provision import paths, zfs
    from vllama_provision.inventory import to_plain
except ImportError as exc:
    VLLAMA_IMPORT_ERROR = exc
else:
    VLLAMA_IMPORT_ERROR = None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        require_package(VLLAMA_IMPORT_ERROR)
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        plan = to_plain(self._templar.template(task_vars["_vllama_plan"]))
        parent = plan.get("zfs_dataset") or ""
        if not parent:
            result.update(changed=False, msg="no vllama_zfs_dataset: plain folders",
                          ansible_facts={"_vllama_zfs": {"parent": "", "datasets": []}})
            return result
        sources = to_plain(self._templar.template(task_vars.get("_vllama_sources") or {}))
        props = plan.get("zfs_properties") or {}
        wanted = zfs.wanted_datasets(sources, {i["name"]: i["model"]["raw"]
                                               for i in plan.get("instances") or []})
        host = task_vars.get("inventory_hostname", "")
        dirs = list(plan.get("zfs_import_dirs") or [])
        module_args = {"parent": parent, "import_dirs": dirs,
                       "datasets": [{"name": w.name, "mountpoint": w.mountpoint}
                                    for w in wanted],
                       "snapshot": zfs.STAGED_SNAPSHOT}

        def read():
            return self._execute_module(module_name="vllama.provision.vllama_zfs",
                                        task_vars=task_vars,
                                        module_args={**module_args, "state": "facts"})

        facts = read()
        if facts.get("failed"):
            result.update(failed=True, msg=f"reading ZFS on this host failed: {facts.get('msg')}")
            return result
        pool = facts.get("pool") or {}
        if facts.get("tools") and not pool.get("exists"):
            decision = zfs.pool_import(pool.get("name") or parent.split("/")[0],
                                       pool.get("importable") or [],
                                       zfs.load_pool_record(paths.state_dir(), host), dirs)
            if decision.refusal:
                result.update(failed=True, vllama_refused=True, refusals=[decision.refusal],
                              msg=decision.refusal)
                return result
            if decision.pool_id:
                done = self._execute_module(
                    module_name="vllama.provision.vllama_zfs", task_vars=task_vars,
                    module_args={**module_args, "state": "imported",
                                 "pool_id": decision.pool_id, "force": decision.force})
                if done.get("failed"):
                    result.update(failed=True, msg=f"importing the pool failed: {done.get('msg')}")
                    return result
                result.update(changed=True, imported={"pool": pool.get("name"),
                                                      "id": decision.pool_id,
                                                      "forced": decision.force})
                if self._play_context.check_mode:  # nothing imported: nothing more to read
                    result["msg"] = f"would import pool {pool.get('name')} (id {decision.pool_id})"
                    result["ansible_facts"] = {"_vllama_zfs": {
                        "parent": parent, "properties": props,
                        "datasets": [{**asdict(w), "sealed": False} for w in wanted]}}
                    return result
                facts = read()
                if facts.get("failed"):
                    result.update(failed=True,
                                  msg=f"reading ZFS on this host failed: {facts.get('msg')}")
                    return result
                pool = facts.get("pool") or {}
        if pool.get("exists") and pool.get("guid"):
            zfs.save_pool_record(paths.state_dir(), host, pool["name"], str(pool["guid"]))
        refusals = zfs.preflight_refusals(parent, props, facts, wanted)
        keys = ("name", "version", "available_bytes")
        result.setdefault("changed", False)
        result.update(pool={k: pool.get(k) for k in keys},
                      datasets=facts.get("datasets") or [])
        if refusals:
            result.update(failed=True, vllama_refused=True, refusals=refusals,
                          msg="; ".join(refusals))
            return result
        states = {d["name"]: d for d in facts.get("datasets") or []}
        datasets = [{**asdict(w), "sealed": bool(states.get(w.name, {}).get("sealed"))}
                    for w in wanted]
        result["msg"] = (f"{zfs.PoolInfo.from_facts(pool).describe()} takes "
                         + (", ".join(f"{k}={v}" for k, v in props.items()) or "its defaults"))
        result["ansible_facts"] = {"_vllama_zfs": {"parent": parent, "properties": props,
                                                   "datasets": datasets}}
        return result
