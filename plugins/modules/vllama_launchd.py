#!/usr/bin/python
"""A Mac engine's LaunchDaemon through launchctl's current verbs (bootstrap, bootout,
kickstart -k; never the legacy load/unload), and a quick check that the server stayed up.

launchctl returns as soon as launchd started the process, not when the server is ready:
readiness is the verification's (vllama_verify polls the engine's own probe). What this module
adds is the crash check: a server that exits within ``settle`` seconds of its start (a bad
argument, a model it cannot load) fails the task at once with its last exit code and the tail
of its log, so the run rolls back instead of waiting for the verification's timeout.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllama_launchd
short_description: Start, restart, reload or stop a vllama LaunchDaemon
description:
  - C(started) bootstraps the job when launchd has not loaded it, or kickstarts it when it is
    loaded but not running.
  - C(restarted) kickstarts it with C(-k) (kill and start again), or bootstraps it.
  - C(reloaded) boots it out (when loaded) and bootstraps it again from its plist, for a
    changed plist.
  - C(stopped) boots it out (launchd sends SIGTERM, then SIGKILL after the plist's ExitTimeOut).
options:
  label:
    description: The job's label (C(org.vllama.NAME)).
    type: str
    required: true
  plist:
    description: The job's plist in /Library/LaunchDaemons.
    type: path
    required: true
  state:
    description: What to do.
    type: str
    choices: [started, restarted, reloaded, stopped]
    default: started
  launchctl:
    description: launchctl's path (the tests' stand-in Mac keeps an imitation elsewhere).
    type: path
    default: /bin/launchctl
  settle:
    description: Seconds the server must keep running after a start (0 skips the check).
    type: int
    default: 5
  log:
    description: The server's error log, whose tail a failure quotes.
    type: path
    default: ""
author: vllama-provision maintainers (@vllama-provision)
"""

EXAMPLES = r"""
- name: Restart an engine.
  vllama.provision.vllama_launchd:
    label: org.vllama.smollm2
    plist: /Library/LaunchDaemons/org.vllama.smollm2.plist
    state: restarted
"""

RETURN = r"""
calls:
  description: The launchctl subcommands run, in order (C(bootout), C(bootstrap), C(kickstart -k)).
  returned: always
  type: list
  elements: str
pid:
  description: The server's process id afterwards (null when stopped).
  returned: always
  type: int
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vllama.provision.plugins.module_utils import vllama_launchd as launchd


def main():
    module = AnsibleModule(argument_spec={
        "label": {"type": "str", "required": True},
        "plist": {"type": "path", "required": True},
        "state": {"type": "str", "default": "started",
                  "choices": ["started", "restarted", "reloaded", "stopped"]},
        "launchctl": {"type": "path", "default": "/bin/launchctl"},
        "settle": {"type": "int", "default": 5},
        "log": {"type": "path", "default": ""},
    }, supports_check_mode=True)
    params = module.params
    target = "system/" + params["label"]
    calls = []

    def launchctl(*words, check=True):
        calls.append(" ".join(words[:2]) if words[0] == "kickstart" else words[0])
        rc, out, err = module.run_command([params["launchctl"], *words])
        if check and rc != 0:
            module.fail_json(msg=f"launchctl {' '.join(words)} failed ({rc}): "
                                 f"{(err or out).strip()}", calls=calls)
        return rc, out

    def job():
        rc, out = module.run_command([params["launchctl"], "print", target])[:2]
        return launchd.parse_print(out) if rc == 0 else None

    before = job()
    state = params["state"]
    wanted = {
        "started": [] if before and before.get("state") == "running" else
        (["kickstart"] if before else ["bootstrap"]),
        "restarted": ["kickstart -k"] if before else ["bootstrap"],
        "reloaded": (["bootout"] if before else []) + ["bootstrap"],
        "stopped": ["bootout"] if before else [],
    }[state]
    if module.check_mode or not wanted:
        module.exit_json(changed=bool(wanted), calls=wanted,
                         pid=(before or {}).get("pid"))
    for step in wanted:
        if step == "bootout":
            launchctl("bootout", target)
        elif step == "bootstrap":
            launchctl("bootstrap", "system", params["plist"])
        else:
            launchctl(*step.split(), target)
    if state == "stopped":
        module.exit_json(changed=True, calls=calls, pid=None)
    after = _settled(job, params["settle"])
    if not after or after.get("state") != "running" or not after.get("pid"):
        tail = ""
        if params["log"]:
            try:
                with open(params["log"], encoding="utf-8", errors="replace") as handle:
                    tail = " | ".join(handle.read().splitlines()[-6:])
            except OSError:
                tail = ""
        module.fail_json(
            msg=f"{params['label']} exited after its start (last exit code "
                f"{(after or {}).get('last_exit_code')})" + (f"; its log: {tail}" if tail else ""),
            calls=calls)
    module.exit_json(changed=True, calls=calls, pid=after["pid"])


def _settled(job, seconds):
    """The job once it ran ``seconds`` (None when it did not): a server that exits, or that
    KeepAlive restarts (its pid changes), within them did not start."""
    deadline = time.time() + seconds
    pid = None
    while True:
        now = job()
        running = bool(now and now.get("state") == "running" and now.get("pid"))
        if running and pid is None:
            pid = now["pid"]
        elif pid is not None and (not running or now["pid"] != pid):
            return now if now and not running else None
        if time.time() >= deadline:
            return now
        time.sleep(1)


if __name__ == "__main__":
    main()
