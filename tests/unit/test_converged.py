"""The converged check before the play (the vllama_converged action): which runs and results
let a host end the play after its one round trip. Anything it does not trust goes to the
whole play; the play's own comparison and repairs are tested on lab hosts (tests/e2e)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

ACTION = importlib.import_module(
    "ansible_collections.vllama.provision.plugins.action.vllama_converged")


def test_a_plain_apply_may_end_at_the_check() -> None:
    assert ACTION.run_mode_reason({}) == ""
    assert ACTION.run_mode_reason({"ansible_run_tags": ["all"], "ansible_skip_tags": [],
                                   "vllama_phase": "all", "vllama_rotate_keys": [],
                                   "vllama_verify_store": False}) == ""


@pytest.mark.parametrize(("task_vars", "reason"), [
    ({"ansible_check_mode": True}, "check-mode"),
    ({"ansible_diff_mode": True}, "differences"),
    ({"ansible_run_tags": ["vllama_preflight"]}, "tags"),
    ({"ansible_skip_tags": ["vllama_run"]}, "tags"),
    ({"vllama_phase": "prepare"}, "rollout"),
    ({"vllama_phase": "switch"}, "rollout"),
    ({"vllama_rollback": {"to": ""}}, "vllama_rollback"),
    ({"vllama_run_bundle": {"path": "/b"}}, "vllama_run_bundle"),
    ({"vllama_engine_override": {"versions": ["1"]}}, "vllama_engine_override"),
    ({"vllama_rotate_keys": ["chat"]}, "key rotation"),
    ({"vllama_verify_store": True}, "vllama_verify_store"),
    ({"vllama_require_artifacts": "yes"}, "vllama_require_artifacts"),
])
def test_runs_that_need_the_whole_play(task_vars: dict[str, Any], reason: str) -> None:
    assert reason in ACTION.run_mode_reason(task_vars)


CONVERGED = {"acquired": True, "released": True, "differences": [], "phases": [],
             "models_to_check": [], "exposed_keys": [], "instances": {}}


def test_only_a_result_with_nothing_to_do_is_converged() -> None:
    assert ACTION.differences_reason(CONVERGED) == ""
    for change, reason in [
            ({"failed": True, "msg": "boom"}, "comparison failed (boom)"),
            ({"facts_changed": True}, "facts changed"),
            ({"acquired": False}, "holds its lock"),
            ({"differences": ["chat: x differs"], "phases": ["configure"]}, "1 difference"),
            ({"models_to_check": ["chat"]}, "difference"),
            ({"exposed_keys": ["/k.key"]}, "difference")]:
        assert reason in ACTION.differences_reason({**CONVERGED, **change}), change


def test_the_controller_cannot_verify_what_the_host_must() -> None:
    plan = {"instances": [{"name": "chat"}, {"name": "embed"}]}
    both = {"vllama_controller_verifies": {"h": ["chat", "embed"]}}
    assert ACTION.ActionModule._verify_reason(both, "h", plan) == ""
    one = {"vllama_controller_verifies": {"h": ["chat"]}}
    assert "cannot reach" in ACTION.ActionModule._verify_reason(one, "h", plan)
    assert ACTION.ActionModule._verify_reason({**one, "vllama_verify": False}, "h", plan) == ""
