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


def _inspected(healthy_endpoint: bool = True) -> dict:
    release = {"id": "r1", "engine": "vllm", "engine_version": "0.32.0", "served_name": "q"}
    return {"instances": {"q": {"current": "r1", "previous": None, "releases": [release],
                                "active": "active", "pending": None,
                                "endpoint": {"healthy": healthy_endpoint}}},
            "lock": None, "history": []}


def test_status_makes_a_host_with_unhealthy_gpus_unhealthy():
    from vllama_provision.report import Report, shape_problems
    from vllama_provision.status import render, shape

    hosts = ["gpu-ok", "gpu-mismatch", "cpu"]
    data = shape(hosts, {h: _inspected() for h in hosts},
                 {"gpu-ok": HEALTHY, "gpu-mismatch": MISMATCH,
                  "cpu": {**HEALTHY, "applicable": False, "gpu_count": 0}}, Report("status"))
    doc = data.to_dict()
    assert shape_problems(doc, "status") == []
    assert [doc["hosts"][h]["healthy"] for h in hosts] == [True, False, True]
    assert [doc["hosts"][h]["status"] for h in hosts] == ["ok", "failed", "ok"]
    assert doc["summary"]["unhealthy"] == ["gpu-mismatch"] and data.exit_code == 1
    assert doc["hosts"]["gpu-mismatch"]["gpu_health"]["nvml"] == "mismatch"
    assert doc["hosts"]["gpu-ok"]["instances"][0]["release"] == "r1"
    text = render(data)
    assert "gpu-mismatch: GPUs UNHEALTHY: nvml: NVML does not initialise" in text
    assert "gpu-ok: GPUs healthy: 2 GPU(s)" in text
    assert "cpu: " not in text  # no GPU line for a host without NVIDIA GPUs
    # A down endpoint still makes a healthy-GPU host unhealthy.
    down = shape(["gpu-ok"], {"gpu-ok": _inspected(False)}, {"gpu-ok": HEALTHY}, Report("s"))
    assert down.to_dict()["summary"]["unhealthy"] == ["gpu-ok"]
