"""The controller's reading of the GPU health result (what `status` and `verify` print)."""

from __future__ import annotations

from vllama_provision import gpu_health

HEALTHY = {"applicable": True, "healthy": True, "kernel": "6.1.0-9-amd64", "nvml": "ok",
           "driver_version": "580.82.07", "library_versions": ["580.82.07"],
           "loaded_module_version": "580.82.07", "module_files": [], "gpu_count": 2,
           "checks": [{"name": "nvml", "ok": True, "detail": "NVML initialised"}]}
MISMATCH = {**HEALTHY, "healthy": False, "nvml": "mismatch", "checks": [
    {"name": "nvml", "ok": False, "detail": "NVML does not initialise (mismatch)"},
    {"name": "driver_library_match", "ok": False,
     "detail": "kernel module 580.65.06, user-space library 580.82.07"}]}


def test_reads_a_task_result_and_a_fact():
    assert gpu_health.from_result({"vllama_gpu_health": HEALTHY}) == HEALTHY
    assert gpu_health.from_result({"ansible_facts": {"vllama_gpu_health": HEALTHY}}) == HEALTHY
    assert gpu_health.from_result({"changed": False}) is None


def test_summaries():
    assert gpu_health.summary(None) == "GPU health unknown (not checked)"
    assert gpu_health.summary({**HEALTHY, "applicable": False}) == "no NVIDIA GPU"
    assert gpu_health.summary(HEALTHY) == ("GPUs healthy: 2 GPU(s), driver 580.82.07, "
                                           "kernel 6.1.0-9-amd64")
    text = gpu_health.summary(MISMATCH)
    assert text.startswith("GPUs UNHEALTHY: nvml: NVML does not initialise")
    assert "kernel module 580.65.06, user-space library 580.82.07" in text


def test_problems_only_for_failed_checks_of_gpu_hosts():
    assert gpu_health.problems(HEALTHY) == []
    assert gpu_health.problems({**MISMATCH, "applicable": False}) == []
    assert len(gpu_health.problems(MISMATCH)) == 2
