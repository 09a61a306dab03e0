"""The fleet as one service, through its gateway, with OpenAI's own Python client: routing by
model, errors in OpenAI's format, failover, a long stream on a busy instance, secrets, and the
files the gateway host got (the same bytes `render` writes)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from gateway_clients import Clients, Gap
from wheels import NEW, OLD

from .conftest import ALL, EMBED, SHARED, SINGLE, UNIT, Service

pytestmark = pytest.mark.lab

SHORT = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_are_the_union_of_the_fleet(service: Service) -> None:
    assert service.served() == ALL


def test_chat_and_streams_reach_every_instance_of_a_model(service: Service) -> None:
    client = service.client()
    since = len(service.access_log().splitlines())
    for _ in range(4):
        answer = client.chat.completions.create(model=SHARED, messages=SHORT, max_tokens=8)
        assert answer.choices[0].message.content
        assert answer.model == SHARED
    chunks = list(client.chat.completions.create(model=SHARED, messages=SHORT, max_tokens=8,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and text
    single = client.completions.create(model=SINGLE, prompt="Paris is", max_tokens=4)
    assert single.choices[0].text
    e1, e2, e3 = service.engines
    answered = service.answered_by(since)
    # leastconn among idle instances takes turns: both instances of SHARED answered.
    assert {f"u_{e1.name}.smollm2", f"u_{e2.name}.smollm2"} <= set(answered[:5])
    assert answered[5:] == [f"u_{e3.name}.smollm2"]
    # Access logs name the client key, never show it.
    log = service.access_log()
    assert "key=default model=" + SHARED in log
    assert service.key not in log


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def test_embeddings_are_served_beside_chat_on_one_host(service: Service) -> None:
    """The embedding instance runs next to a chat instance on e3 (two units, two ports) and
    answers through the gateway with the model's 384 dimensions; its vectors mean something."""
    e3 = service.engines[2]
    units = "systemctl is-active vllama-smollm2 vllama-minilm"
    assert e3.ssh(units).stdout.split() == ["active", "active"]
    client = service.client()
    since = len(service.access_log().splitlines())
    texts = ["Paris is the capital of France.", "The capital of France is Paris.",
             "Sourdough needs a long, slow rise."]
    answer = client.embeddings.create(model=EMBED, input=texts)
    vectors = [d.embedding for d in answer.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2]) + 0.2
    assert service.answered_by(since) == [f"u_{e3.name}.minilm"]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="no-such-embedder", input="hi")
    assert unknown.value.code == "model_not_found"
    # A task the model does not serve is refused by the gateway itself (no engine sees it):
    # chat to the embedder, embeddings from a chat model.
    since = len(service.access_log().splitlines())
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model=EMBED, max_tokens=2,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert chat.value.code == "model_not_supported"
    assert "embeddings only" in chat.value.message
    with pytest.raises(openai.BadRequestError) as embed:
        client.embeddings.create(model=SINGLE, input="hi")
    assert embed.value.code == "model_not_supported"
    assert service.answered_by(since) == []
    refused = [line for line in service.access_log().splitlines()[since:]
               if "/<NOSRV> " in line and " 400 " in line]
    assert len(refused) == 2, refused


def test_errors_answer_in_openai_format(service: Service) -> None:
    with pytest.raises(openai.AuthenticationError) as denied:
        service.client(key="sk-not-a-key").models.list()
    assert denied.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as unknown:
        service.client().chat.completions.create(model="no-such-model", messages=SHORT,
                                                 max_tokens=4)
    assert unknown.value.code == "model_not_found"
    headers = {"Authorization": f"Bearer {service.key}"}
    url = f"{service.url}/v1/chat/completions"
    not_json = httpx.post(url, content=b"model=smollm2", headers=headers)
    assert not_json.status_code == 400
    assert not_json.json()["error"]["code"] == "invalid_body"
    no_model = httpx.post(url, json={"messages": SHORT}, headers=headers)
    assert (no_model.status_code, no_model.json()["error"]["type"]) == (
        400, "invalid_request_error")
    huge = httpx.post(url, headers=headers, content=json.dumps(
        {"model": SHARED, "messages": SHORT, "user": "x" * (1024 * 1024 + 1)}))
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "request_too_large"


def test_a_large_body_with_the_model_last_is_routed(service: Service) -> None:
    """200 KB before `model`, the body's last key: found wherever it is, up to max_body."""
    body = json.dumps({"messages": SHORT, "max_tokens": 4, "user": "u" * 200_000,
                       "model": SINGLE})
    assert body.endswith(f'"model": "{SINGLE}"}}') and len(body) > 200_000
    answer = httpx.post(f"{service.url}/v1/chat/completions", content=body, timeout=120,
                        headers={"Authorization": f"Bearer {service.key}",
                                 "Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == SINGLE


def test_one_instance_down_fails_no_request(service: Service) -> None:
    e1 = service.engines[0]
    client = service.client()
    e1.ssh(f"systemctl stop {UNIT}")
    try:
        # At once, before any health check noticed: a refused connection is retried on the
        # other instance (nothing reached an engine), so every request succeeds.
        for _ in range(6):
            answer = client.chat.completions.create(model=SHARED, messages=SHORT, max_tokens=4)
            assert answer.choices[0].message.content
        time.sleep(3)  # two failed checks, a second apart
        assert service.served() == ALL
    finally:
        e1.ssh(f"systemctl start {UNIT}")


def test_no_instance_left_is_a_503_with_retry_after(service: Service) -> None:
    e1, e2, _ = service.engines
    for host in (e1, e2):
        host.ssh(f"systemctl stop {UNIT}")
    try:
        service.wait_served({SINGLE, EMBED}, timeout=30)
        with pytest.raises(openai.InternalServerError) as gone:
            service.client().chat.completions.create(model=SHARED, messages=SHORT,
                                                     max_tokens=4)
        assert gone.value.status_code == 503
        assert gone.value.code == "model_unavailable"
        assert int(gone.value.response.headers["retry-after"]) == 5
    finally:
        for host in (e1, e2):
            host.ssh(f"systemctl start {UNIT}")
    service.wait_served(ALL)


def test_a_long_stream_keeps_its_instance_up_and_the_next_request_waits(service: Service
                                                                         ) -> None:
    """llama-cpp-python answers one request at a time: the gateway queues the next one
    (maxconn 1) instead of sending it to the engine, and its health checks use a probe the
    busy engine answers at once, so the instance stays up through a long generation."""
    client = service.client(timeout=300)
    seen: list[set[str]] = []
    queued: dict[str, Any] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(service.served())
            time.sleep(0.5)

    def second() -> None:
        start = time.monotonic()
        answer = client.completions.create(model=SINGLE, prompt="Paris is", max_tokens=4)
        queued.update(text=answer.choices[0].text, seconds=time.monotonic() - start,
                      finished=time.monotonic())

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.monotonic()
    # End-of-text tokens banned: the generation runs its whole length.
    stream = client.completions.create(model=SINGLE, prompt="Once upon a time", stream=True,
                                       max_tokens=2500, logit_bias={"0": -100, "1": -100,
                                                                    "2": -100})
    pieces, reasons = [], []
    waiter = None
    for chunk in stream:
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
        if waiter is None and len(pieces) == 5:
            waiter = threading.Thread(target=second)
            waiter.start()
    stream_end = time.monotonic()
    assert waiter is not None
    waiter.join(timeout=120)
    done.set()
    watcher.join()
    seconds = stream_end - start
    assert reasons[-1] == "length", "the stream was cut"
    print(f"stream of {len(pieces)} chunks in {seconds:.1f} s; {len(seen)} model lists taken "
          "meanwhile")
    assert len(pieces) >= 2400
    assert seconds > 30, f"a {seconds:.1f} s stream proves little"
    assert seen and all(SINGLE in served for served in seen), seen
    assert queued["text"]
    assert queued["finished"] >= stream_end, "the second request reached the busy engine"


def test_no_key_shows_on_the_gateway_host(service: Service) -> None:
    gw = service.gateway
    folders = "/etc /var /run /opt /root /tmp /home /srv"
    for key in [service.key, *service.upstream_keys()]:
        files = gw.ssh(f"grep -rlsF -e '{key}' {folders} || true").stdout.split()
        expected = [] if key == service.key else ["/etc/vllama/gateway/upstreams.map"]
        assert files == expected, (key[:6], files)
        assert key not in gw.ssh("journalctl -o cat --no-pager").stdout
        assert key not in gw.ssh("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
    modes = gw.ssh("stat -c '%a %U %n' /etc/vllama/gateway/*.map").stdout.split("\n")
    assert "600 root /etc/vllama/gateway/upstreams.map" in modes
    assert "600 root /etc/vllama/gateway/clients.map" in modes
    # The package's own service never ran: masked before the package was installed.
    assert gw.ssh("systemctl is-enabled haproxy.service", check=False).stdout.strip() == "masked"


def test_the_host_runs_what_render_writes(service: Service, run_cli: Any,
                                          tmp_path: Path) -> None:
    out = tmp_path / "render"
    result = run_cli("render", str(service.inventory), "--out", str(out), "--limit",
                     service.gateway.name)
    assert result.rc == 0, result.stderr
    written = [p for p in (out / service.gateway.name).rglob("*") if p.is_file()]
    assert len(written) == 4
    for path in written:
        dest = "/" + path.relative_to(out / service.gateway.name).as_posix()
        assert service.gateway.ssh(f"cat {dest}").stdout == path.read_text(), dest


def test_a_second_apply_changes_nothing(service: Service, run_cli: Any) -> None:
    result = run_cli("apply", str(service.inventory))
    assert result.rc == 0, result.stderr
    hosts = result.report["hosts"]
    assert {name: entry["changed"] for name, entry in hosts.items()} == dict.fromkeys(hosts, 0)
    gateway = hosts[service.gateway.name]["gateway"]
    assert gateway["endpoint"] == service.url
    assert sorted(gateway["models"]) == sorted(ALL)
    assert gateway["servers"][SHARED] == {f"u_{h.name}.smollm2": "UP"
                                          for h in service.engines[:2]}


def test_verify_asks_every_model_through_the_gateway(service: Service, run_cli: Any) -> None:
    result = run_cli("verify", str(service.inventory))
    assert result.rc == 0, result.stderr
    hosts = result.report["hosts"]
    e1, e2, e3 = service.engines
    through = hosts[service.gateway.name]["gateway"]
    assert through[SINGLE]["verified"] and through[SINGLE]["answered_by"] == f"{e3.name}/smollm2"
    assert through[SHARED]["verified"] and through[SHARED]["answer"]
    who = through[SHARED]["answered_by"]
    assert who in (f"{e1.name}/smollm2", f"{e2.name}/smollm2")
    assert through[EMBED]["verified"] and through[EMBED]["answered_by"] == f"{e3.name}/minilm"
    assert through[EMBED]["answer"] == "an embedding of 384 dimensions"
    # `gateway` joins the verified_from of the instance that answered, and only that one.
    answerers = {who, through[SINGLE]["answered_by"], through[EMBED]["answered_by"]}
    for host in (e1, e2, e3):
        for item in hosts[host.name]["instances"]:
            answered = f"{host.name}/{item['name']}" in answerers
            want = ["controller", "gateway"] if answered else ["controller"]
            assert item["verified_from"] == want, (host.name, item)
    minilm = next(i for i in hosts[e3.name]["instances"] if i["name"] == "minilm")
    assert minilm["answer"] == "an embedding of 384 dimensions"


# ------------------------------------------------------------------ rollouts through it ---
# Clients send 12 requests a second (chat and streams, max_retries=0) to the model served by
# two hosts while the fleet changes under them: none may fail, no stream may be cut, and the
# gateway's own 5xx counter for that model stays where it was. The model served by one host
# alone has a gap while that host switches: measured and printed.

SHARED_BACKEND = f"m_{SHARED}"


def _rollout(service: Service, run_cli: Any, *args: str, reload: bool = False
             ) -> tuple[Any, Clients, Gap]:
    """``reload``: the gateway reloads during this one, and new workers count from 0."""
    before = int(service.stat(SHARED_BACKEND)["hrsp_5xx"])
    with Gap(service.client(timeout=60), SINGLE) as gap, \
            Clients(service.client(timeout=180), SHARED, rate=12) as clients:
        result = run_cli(*args, str(service.inventory))
        time.sleep(1)
    assert result.rc == 0, result.stderr
    print(f"{args[0]}: {clients.sent} requests in {clients.seconds:.0f} s, {clients.ok} ok, "
          f"{len(clients.failures)} failed; {SINGLE} (one instance) gap {gap.seconds:.1f} s")
    assert clients.sent >= 12 * clients.seconds - 1
    assert clients.failures == [], clients.failures[:5]
    assert clients.cut == [], clients.cut[:5]
    assert clients.ok == clients.sent
    assert int(service.stat(SHARED_BACKEND)["hrsp_5xx"]) == (0 if reload else before)
    return result, clients, gap


def test_a_rolling_upgrade_fails_no_request(service: Service, run_cli: Any,
                                            relabelled_wheel: Path) -> None:
    result, _clients, gap = _rollout(service, run_cli, "upgrade", "--engine", "llamacpp",
                                     "--version", NEW)
    assert {service.version(h) for h in service.engines} == {NEW}
    # The report says which model had a gap, on the host whose switch made it.
    e1, e2, e3 = service.engines
    gw = service.gateway.name
    assert (f"gateway {gw}: {SINGLE!r} had no other instance in service while this host "
            "switched (a gap)") in result.report["hosts"][e3.name]["notes"]
    assert not [n for h in (e1, e2) for n in result.report["hosts"][h.name]["notes"]
                if "a gap" in n]
    assert gap.seconds > 0
    # Every instance is back in every gateway.
    service.wait_served(ALL, timeout=30)


def test_a_rollback_fails_no_request(service: Service, run_cli: Any) -> None:
    _rollout(service, run_cli, "rollback")
    assert {service.version(h) for h in service.engines} == {OLD}


def test_a_changed_setting_applied_fails_no_request(service: Service, run_cli: Any) -> None:
    """A plain apply: the host whose setting changed is drained, switched and returned."""
    e1 = service.engines[0]
    data = yaml.safe_load(service.inventory.read_text())
    data["all"]["hosts"][e1.name]["vllama_instances"][0]["ctx_size"] = 1024
    service.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    result, _clients, _gap = _rollout(service, run_cli, "apply")
    assert result.report["hosts"][e1.name]["changed"] > 0
    assert "--n_ctx 1024" in e1.ssh("cat /opt/vllama/instances/smollm2/current/engine.env").stdout


def test_a_gateway_reload_fails_no_request_and_keeps_drains(service: Service,
                                                             run_cli: Any) -> None:
    gw, e2 = service.gateway, service.engines[1]
    drained = f"u_{e2.name}.smollm2"
    pid = gw.ssh("systemctl show -p MainPID --value vllama-gateway").stdout.strip()
    service.admin(f"set server {SHARED_BACKEND}/{drained} state drain")
    data = yaml.safe_load(service.inventory.read_text())
    data["all"]["hosts"][gw.name]["vllama_gateway_retry_after"] = 7
    service.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        result, _clients, _gap = _rollout(service, run_cli, "apply", reload=True)
        assert result.report["hosts"][gw.name]["changed"] > 0
        # Reloaded, not restarted: the same master process; new workers with the new config.
        assert gw.ssh("systemctl show -p MainPID --value vllama-gateway").stdout.strip() == pid
        assert "hdr Retry-After 7 " in gw.ssh("cat /etc/vllama/gateway/haproxy.cfg").stdout
        # The drained instance stayed drained across the reload.
        servers = result.report["hosts"][gw.name]["gateway"]["servers"][SHARED]
        assert servers[drained] == "DRAIN", servers
        # `status` shows each model's instances in each gateway.
        status = run_cli("status", str(service.inventory))
        assert status.rc == 0, status.stderr
        view = status.report["hosts"][gw.name]["gateway"]
        assert view[SHARED] == {f"{service.engines[0].name}/smollm2": "UP",
                                f"{e2.name}/smollm2": "DRAIN"}
        assert f"{gw.name}: gateway: '{SHARED}': " in status.stdout
    finally:
        service.admin(f"set server {SHARED_BACKEND}/{drained} state ready")


def test_a_rotated_client_key_replaces_the_old_one(service: Service, run_cli: Any) -> None:
    old = service.key
    result = run_cli("key", "rotate", str(service.inventory), "--gateway", "default")
    assert result.rc == 0, result.stderr
    assert service.key != old
    assert old not in result.stdout + result.stderr
    with pytest.raises(openai.AuthenticationError):
        service.client(key=old).models.list()
    assert service.served() == ALL  # with the new key


def test_an_unreachable_gateway_stops_the_switch_before_any_change(service: Service,
                                                                   run_cli: Any) -> None:
    gw, e1 = service.gateway, service.engines[0]
    current = "readlink /opt/vllama/instances/smollm2/current"
    before = e1.ssh(current).stdout
    data = yaml.safe_load(service.inventory.read_text())
    instance = data["all"]["hosts"][e1.name]["vllama_instances"][0]
    saved = instance["ctx_size"]
    instance["ctx_size"] = 1536
    service.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    service.lab.pause(gw.name)
    try:
        result = run_cli("apply", str(service.inventory), "--limit", e1.name)
    finally:
        service.lab.resume(gw.name)
        instance["ctx_size"] = saved
        service.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    assert result.rc != 0
    entry = result.report["hosts"][e1.name]
    assert entry["status"] == "refused", entry
    assert f"the gateway {gw.name} cannot be reached" in entry["error"]
    assert e1.ssh(current).stdout == before, "nothing switched"
    assert e1.ssh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    service.wait_served(ALL, timeout=60)


def test_a_tls_listener_serves_https_and_verify_trusts_its_certificate(
        service: Service, run_cli: Any, tmp_path: Path) -> None:
    """Last: the gateway's listener moves to https (a reload)."""
    import ssl
    import subprocess

    from openai import OpenAI

    gw = service.gateway
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    f"/CN={gw.name}", "-addext", f"subjectAltName=IP:{gw.address}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    key.chmod(0o600)
    data = yaml.safe_load(service.inventory.read_text())
    data["all"]["hosts"][gw.name].update(vllama_gateway_tls_cert_file=str(cert),
                                         vllama_gateway_tls_key_file=str(key))
    service.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    applied = run_cli("apply", str(service.inventory), "--limit", gw.name)
    assert applied.rc == 0, applied.stderr
    assert applied.report["hosts"][gw.name]["gateway"]["endpoint"].startswith("https://")
    trust = ssl.create_default_context(cafile=str(cert))
    client = OpenAI(base_url=f"https://{gw.address}:4000/v1", api_key=service.key,
                    max_retries=0, http_client=httpx.Client(verify=trust, timeout=60))
    assert {m.id for m in client.models.list().data} == ALL
    answer = client.chat.completions.create(model=SHARED, messages=SHORT, max_tokens=4)
    assert answer.choices[0].message.content
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{gw.address}:4000/v1/models", timeout=5).raise_for_status()
    assert gw.ssh("stat -c '%a %U' /etc/vllama/gateway/tls.pem").stdout.strip() == "600 root"
    private = key.read_text().strip().splitlines()[1]
    assert private not in gw.ssh("journalctl -o cat --no-pager").stdout
    checked = run_cli("verify", str(service.inventory))
    assert checked.rc == 0, checked.stderr
    assert all(c["verified"] for c in checked.report["hosts"][gw.name]["gateway"].values())
