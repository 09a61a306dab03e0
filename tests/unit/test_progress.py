"""The live output of a run, from ansible-runner events (the shapes ansible-runner emits):
phases as they start, what changed or failed per host, the rest counted, and tasks that do not
apply to a host summarised on one line."""

from __future__ import annotations

from typing import Any

from vllama_provision.report import Report
from vllama_provision.runner import EventHandler, Progress, RunResult


def _event(kind: str, host: str, task: str, path: str, role: str = "vllama",
           **res: Any) -> dict[str, Any]:
    return {"event": kind, "event_data": {"host": host, "task": task, "role": role,
                                          "task_path": f"/x/roles/{role}/tasks/{path}:3",
                                          "task_action": "ansible.builtin.command", "res": res}}


def test_phases_changes_and_one_line_for_what_does_not_apply(capsys) -> None:
    handler = EventHandler(RunResult(report=Report("apply")), Progress())
    events = [
        _event("runner_on_ok", "h1", "Take the host lock.", "main.yml"),
        _event("runner_on_ok", "h1", "Validate this host's vllama variables.", "preflight.yml"),
        _event("runner_on_ok", "h1", "Plan the engines.", "preflight.yml"),
        *[_event("runner_on_skipped", "h1", f"Install the NVIDIA driver {n}.", "install.yml",
                 role="vllama_nvidia_driver") for n in range(3)],
        _event("runner_on_skipped", "h1", "Pull the container image.", "install.yml"),
        _event("runner_on_ok", "h1", "Render each release's files.", "configure.yml",
               changed=True),
        _event("runner_on_failed", "h2", "Refuse an engine downgrade.", "preflight.yml",
               msg="h2 runs 0.3.37"),
        {"event": "playbook_on_stats", "event_data": {}},
    ]
    for event in events:
        handler(event)
    lines = [line.strip() for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        "h1               [vllama]",
        "h1               [preflight]",
        "h1               [configure]",
        "h1                 changed     Render each release's files.",
        "h2               [preflight]",
        "h2                 refused     Refuse an engine downgrade.",
        "h1               done: 4 ok, 1 changed; 4 task(s) not applicable here "
        "(vllama 1, vllama_nvidia_driver 3)",
        "h2               done: 0 ok, 0 changed",
    ]
    assert handler.result.report.host("h2").status == "refused"
    assert handler.result.report.host("h1").status == "changed"


def test_a_disabled_progress_prints_nothing(capsys) -> None:
    handler = EventHandler(RunResult(report=Report("facts")), Progress(enabled=False))
    handler(_event("runner_on_ok", "h1", "Gather facts.", "main.yml", role="vllama_facts"))
    handler({"event": "playbook_on_stats", "event_data": {}})
    assert capsys.readouterr().err == ""
