"""A user's own playbook with the collection: built tarball, built wheel, plain ansible-playbook.

Runs on the host the molecule upgrade scenario already booted and converged (no lab host of its
own): the package's wheel is built (`pip wheel --no-deps`) and installed into a fresh venv (not the
project's), the collection tarball (`ansible-galaxy collection build`) into an empty collections
path, and a `site.yml` written as a user would (a task of theirs before and after the roles,
called by FQCN) runs with that venv's `ansible-playbook`: to a verified endpoint, a second run
changed nothing, and a malformed `vllama_instances` is refused by the role's preflight before any
change, with the message the CLI prints for the same host.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                   re.MULTILINE)

SITE = """\
- name: My inference hosts.
  hosts: all
  become: true
  gather_facts: true
  gather_subset: ["!all"]
  vars_files:
    - vllama.yml
  pre_tasks:
    - name: My own task before the roles.
      ansible.builtin.copy:
        dest: /etc/my-site-marker
        content: "written by my own site.yml\\n"
        mode: "0644"
  roles:
    - role: vllama.provision.vllama_facts
    - role: vllama.provision.vllama
  post_tasks:
    - name: My own task after the roles (read the instance's API key).
      ansible.builtin.slurp:
        src: /var/lib/vllama/secrets/smollm2.key
      register: my_key
      no_log: true
    - name: My own task after the roles (ask the endpoint which model it serves).
      ansible.builtin.uri:
        url: "http://{{ ansible_host }}:8080/v1/models"
        headers:
          Authorization: "Bearer {{ my_key.content | b64decode | trim }}"
      register: my_models
      no_log: true
    - name: My own check.
      ansible.builtin.assert:
        that: my_models.json.data | map(attribute='id') | list == ['smollm2-135m-instruct']
        quiet: true
"""


def _run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout, check=False)


def _explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"


def install(tmp: Path) -> tuple[Path, Path]:
    """(fresh venv's bin folder, collections path) holding the built wheel and tarball."""
    dist = tmp / "dist"
    proc = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist),
                 str(REPO)])
    assert proc.returncode == 0, _explain(proc)
    (wheel,) = dist.glob("vllama_provision-*.whl")
    proc = _run([str(Path(sys.executable).parent / "ansible-galaxy"), "collection", "build",
                 "--output-path", str(dist), str(REPO)])
    assert proc.returncode == 0, _explain(proc)
    (tarball,) = dist.glob("vllama-provision-*.tar.gz")
    venv = tmp / "venv"
    proc = _run([sys.executable, "-m", "venv", str(venv)])
    assert proc.returncode == 0, _explain(proc)
    proc = _run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", str(wheel)])
    assert proc.returncode == 0, _explain(proc)
    collections = tmp / "collections"
    collections.mkdir()
    proc = _run([str(venv / "bin/ansible-galaxy"), "collection", "install", "-p",
                 str(collections), str(tarball)], env=clean_env(venv / "bin", collections))
    assert proc.returncode == 0, _explain(proc)
    assert (collections / "ansible_collections/vllama/provision/MANIFEST.json").is_file()
    return venv / "bin", collections


def clean_env(bindir: Path, collections: Path) -> dict[str, str]:
    """A user's shell: nothing of this checkout (no PYTHONPATH, no ANSIBLE_* of the tests)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "MOLECULE_", "PYTHON", "VIRTUAL_ENV", "VLLAMA_"))}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
               ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_HOST_KEY_CHECKING="False",
               ANSIBLE_NOCOLOR="1", NO_COLOR="1")
    return env


def recap(output: str) -> dict[str, dict[str, int]]:
    return {m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]),
                   "failed": int(m[4])} for m in RECAP.findall(output.split("PLAY RECAP")[-1])}


def check(inventory: Path, tmp: Path, scenario_vars: Path) -> None:
    bindir, collections = install(tmp)
    env = clean_env(bindir, collections)
    play = tmp / "site"
    play.mkdir()
    (play / "site.yml").write_text(SITE)
    settings = {k: v for k, v in yaml.safe_load(scenario_vars.read_text()).items()
                if not k.startswith("_")}
    (play / "vllama.yml").write_text(yaml.safe_dump(settings))
    playbook = [str(bindir / "ansible-playbook"), "-i", str(inventory), "site.yml"]

    first = _run(playbook, env=env, cwd=play)
    assert first.returncode == 0, _explain(first)
    (host,) = recap(first.stdout)
    assert recap(first.stdout)[host]["changed"] >= 1, first.stdout[-3000:]  # my marker file
    second = _run(playbook, env=env, cwd=play)
    assert second.returncode == 0, _explain(second)
    assert recap(second.stdout)[host]["changed"] == 0, second.stdout[-6000:]

    # A malformed instance: the role's preflight refuses it before any change, with the
    # message the CLI (the same wheel) prints for the same host. Ansible's own argument-spec
    # check runs first and types each variable (a port that is no integer stops there, named);
    # what a type cannot say (a port out of range) the shared validator says, in the CLI's words.
    wrong_type = _refuse(playbook, env, play, settings, {"port": "http"})
    assert "argument 'port' is of type str found in 'vllama_instances'" in wrong_type, \
        wrong_type[-6000:]
    out_of_range = {"port": 70000}
    refused = _refuse(playbook, env, play, settings, out_of_range)
    lab_inventory = yaml.safe_load(inventory.read_text())
    host_vars = _find_host(lab_inventory, host)
    bad = _with_instance(settings, out_of_range)
    cli_inventory = play / "bad-inventory.yml"
    cli_inventory.write_text(yaml.safe_dump({"all": {"hosts": {host: {**host_vars, **bad}}}}))
    cli = _run([str(bindir / "vllama-provision"), "apply", str(cli_inventory)], env=env, cwd=play)
    assert cli.returncode == 2 and "no host was contacted" in cli.stderr + cli.stdout, \
        _explain(cli)
    cli_lines = [line.strip().split(", ", 1)[1] for line in (cli.stderr + cli.stdout).splitlines()
                 if line.strip().startswith(f"{cli_inventory}, host {host}, ")]
    assert cli_lines, _explain(cli)
    assert any("port" in line for line in cli_lines), cli_lines
    for line in cli_lines:
        assert line in refused, (line, refused[-6000:])
    assert "invalid inventory: inventory, " + cli_lines[0] in refused, refused[-6000:]


def _with_instance(settings: dict, change: dict) -> dict:
    return {**settings, "vllama_instances": [{**settings["vllama_instances"][0], **change}]}


def _refuse(playbook: list[str], env: dict[str, str], play: Path, settings: dict,
            change: dict) -> str:
    """Run the play with one instance field changed; it must fail before changing anything."""
    (play / "bad.json").write_text(json.dumps(_with_instance(settings, change)))
    refused = _run([*playbook, "-e", "@bad.json"], env=env, cwd=play)
    assert refused.returncode != 0, _explain(refused)
    (host,) = recap(refused.stdout)
    assert recap(refused.stdout)[host] == {**recap(refused.stdout)[host], "changed": 0,
                                           "failed": 1}, refused.stdout[-6000:]
    return refused.stdout


def _find_host(inventory: dict, host: str) -> dict:
    """The host's own variables (with its groups' vars) in the lab's inventory."""
    found: dict = {}

    def walk(group: dict, inherited: dict) -> None:
        merged = {**inherited, **(group.get("vars") or {})}
        if host in (group.get("hosts") or {}):
            found.update({**merged, **(group["hosts"][host] or {})})
        for child in (group.get("children") or {}).values():
            walk(child or {}, merged)

    walk(inventory.get("all") or {}, {})
    assert found, f"{host} is not in the lab's inventory"
    return found
