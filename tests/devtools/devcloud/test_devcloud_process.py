"""The simulator as a real process, spoken to over real HTTP with plain ``requests``."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from coda_bridge.cloud.signing import Signer, generate_private_key_pem
from coda_bridge.devtools.devcloud import (
    DevCloudClient,
    DevCloudError,
    DevCloudProcess,
    DevCloudStartError,
    start_devcloud_process,
)
from coda_bridge.devtools.devcloud.cli import devcloud as devcloud_cli
from coda_bridge.devtools.localredis import LocalRedis

#: Real processes (servers, supervisors): the end-to-end tier, not the fast one.
pytestmark = pytest.mark.e2e


TIMEOUT_SEC = 10


def _post(url: str, body: Any, bearer: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return requests.post(url, json=body, headers=headers, timeout=TIMEOUT_SEC)


def test_full_exchange_over_http(
    devcloud_process: DevCloudProcess,
    devcloud: DevCloudClient,
    qpu_id: str,
    bell_ir: dict[str, Any],
    redis_server: LocalRedis,
) -> None:
    base = devcloud_process.base_url
    api = f"{base}/api/internal/qpu"
    created = requests.post(
        f"{base}/devcloud/qpus", json={"qpu_id": qpu_id, "num_qubits": 2}, timeout=TIMEOUT_SEC
    )
    assert created.status_code == 201
    token = requests.post(f"{base}/devcloud/tokens", json={"qpu_id": qpu_id}, timeout=TIMEOUT_SEC).json()[
        "token"
    ]

    # provisioning, then the same token again
    provisioned = _post(f"{api}/connect", {"machine_fingerprint": "host-a"}, token)
    assert provisioned.status_code == 200
    bundle = provisioned.json()
    expected = {
        *("qpu_id", "qpu_display_name", "native_gate_set", "num_qubits", "jwt_private_key", "jwt_key_id"),
        *("redis_url", "cloud_base_url", "connect_path", "heartbeat_path", "webhook_path", "stream_key"),
        *("webhook_url", "vpn", "connection_mode", "issued_at", "connect_id"),
    }
    assert expected <= set(bundle)
    assert bundle["cloud_base_url"] == base
    assert bundle["redis_url"] == redis_server.url
    assert bundle["jwt_private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    reused = _post(f"{api}/connect", {"machine_fingerprint": "host-a"}, token)
    assert reused.status_code == 401
    assert reused.json() == {"error": "QPU node token has already been used"}

    # reconnect with a JWT; wrong machine; unknown QPU
    signer = Signer(bundle["jwt_private_key"], bundle["jwt_key_id"], qpu_id)
    again = _post(f"{api}/connect", {"machine_fingerprint": "host-a"}, signer.sign())
    assert again.status_code == 200 and "jwt_private_key" not in again.json()
    assert _post(f"{api}/connect", {"machine_fingerprint": "host-b"}, signer.sign()).status_code == 401
    stranger = Signer(generate_private_key_pem(), "qpu-ghost-1", "ghost-qpu")
    assert _post(f"{api}/connect", {"machine_fingerprint": "host-a"}, stranger.sign()).status_code == 409

    # heartbeat
    beat = {"current_job": None, "last_job_at": None, "redis_healthy": True, "connectivity": [[0, 1]]}
    assert _post(f"{api}/heartbeat", beat, signer.sign()).status_code == 200
    recorded = devcloud.heartbeats(qpu_id)
    assert len(recorded) == 1 and recorded[0]["jwt_valid"] is True and recorded[0]["body"] == beat

    # a job lands in the stream with its four string fields
    job_id = devcloud.submit(qpu_id, bell_ir, 50, expect="noop")
    entries = redis_server.client().xrange(f"qpu:{qpu_id}:jobs") or []
    assert [fields for _, fields in entries] == [
        {
            "job_id": job_id,
            "callback_url": f"{api}/webhook/{job_id}",
            "ir_json": json.dumps(bell_ir, separators=(",", ":")),
            "shots": "50",
        }
    ]

    # webhook: wrong kid and expired token refused, a good one recorded
    result = {
        "job_id": job_id,
        "status": "completed",
        "counts": {"00": 50},
        "execution_time_ms": 2.0,
        "shots_completed": 50,
    }
    callback = f"{api}/webhook/{job_id}"
    wrong_kid = Signer(bundle["jwt_private_key"], f"qpu-{qpu_id}-1", qpu_id)
    assert _post(callback, result, wrong_kid.sign()).status_code == 401
    assert _post(callback, result, signer.sign(now=time.time() - 7200)).status_code == 401
    assert _post(callback, result, signer.sign()).status_code == 200
    job = devcloud.job(job_id)
    assert job["result"] == result and job["delivery_count"] == 1 and job["expect_ok"] is True
    assert job["latency_ms"] is not None and job["latency_ms"] >= 0
    assert [w["accepted"] for w in devcloud.webhooks(job_id)] == [False, False, True]

    # fault injection: 503 for the next two requests, then 200
    devcloud.set_fault("heartbeat", 503, count=2)
    codes = [_post(f"{api}/heartbeat", beat, signer.sign()).status_code for _ in range(3)]
    assert codes == [503, 503, 200]

    # cancel sets the cloud's key
    devcloud.cancel(job_id)
    assert redis_server.client().exists(f"qpu:job:cancelled:{job_id}") == 1


def test_revoked_and_expired_tokens_over_http(devcloud: DevCloudClient, qpu_id: str) -> None:
    devcloud.create_qpu(qpu_id)
    url = f"{devcloud.base_url}/api/internal/qpu/connect"
    revoked = devcloud.mint_token(qpu_id)
    devcloud.revoke_token(revoked)
    answer = _post(url, {"machine_fingerprint": "h"}, revoked)
    assert (answer.status_code, answer.json()) == (401, {"error": "QPU node token has been revoked"})
    expired = devcloud.mint_token(qpu_id, expires_in_sec=0)
    answer = _post(url, {"machine_fingerprint": "h"}, expired)
    assert (answer.status_code, answer.json()) == (401, {"error": "QPU node token has expired"})
    assert all(revoked not in json.dumps(t) for t in devcloud.tokens(qpu_id))


def test_one_token_provisions_once_under_concurrency(devcloud: DevCloudClient, qpu_id: str) -> None:
    devcloud.create_qpu(qpu_id)
    token = devcloud.mint_token(qpu_id)
    url = f"{devcloud.base_url}/api/internal/qpu/connect"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _post(url, {"machine_fingerprint": f"h{i}"}, token), range(8)))
    assert sorted(a.status_code for a in answers) == [200] + [401] * 7
    winner = next(a.json() for a in answers if a.status_code == 200)
    assert devcloud.qpu(qpu_id)["key_id"] == winner["jwt_key_id"]


def test_health_answers_head(devcloud_process: DevCloudProcess) -> None:
    url = f"{devcloud_process.base_url}/api/internal/qpu/health"
    assert requests.head(url, timeout=TIMEOUT_SEC).status_code == 200
    assert requests.get(url, timeout=TIMEOUT_SEC).json() == {"ok": True}


def test_a_session_keeps_one_connection(devcloud_process: DevCloudProcess, qpu_id: str) -> None:
    """HTTP/1.1 keep-alive: GETs, a POST and an error answer all travel on one TCP connection."""
    base = devcloud_process.base_url
    health = f"{base}/api/internal/qpu/health"
    calls: list[tuple[str, str, Any]] = [
        ("GET", health, None),
        ("POST", f"{base}/devcloud/qpus", {"qpu_id": qpu_id}),
        ("POST", f"{base}/api/internal/qpu/connect", {"machine_fingerprint": "h"}),
        ("GET", health, None),
    ]
    ports = []
    with requests.Session() as session:
        for method, url, body in calls:
            answer = session.request(method, url, json=body, stream=True, timeout=TIMEOUT_SEC)
            conn = answer.raw.connection
            # a server that answers "Connection: close" leaves no socket to the client's pool
            assert conn is not None and conn.sock is not None, (method, url, answer.headers)
            ports.append(conn.sock.getsockname()[1])
            assert answer.content
    assert len(set(ports)) == 1, ports


def _stranger_heartbeat(base: str, qpu_id: str) -> requests.Response:
    """A heartbeat whose token names ``qpu_id`` but is signed by an unknown key: matches a fault on it."""
    signer = Signer(generate_private_key_pem(), "kid-stranger", qpu_id)
    return _post(f"{base}/api/internal/qpu/heartbeat", {"current_job": None}, signer.sign())


def test_a_delayed_answer_does_not_hold_up_others(
    devcloud_process: DevCloudProcess, devcloud: DevCloudClient, qpu_id: str
) -> None:
    devcloud.set_fault("heartbeat", None, qpu_id=qpu_id, count=4, delay_sec=2.0)
    base = devcloud_process.base_url
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        delayed = [pool.submit(_stranger_heartbeat, base, qpu_id) for _ in range(4)]
        time.sleep(0.3)
        for _ in range(5):
            assert requests.get(f"{base}/api/internal/qpu/health", timeout=TIMEOUT_SEC).ok
        assert devcloud.qpus() is not None
        # answered while all four are still sleeping in their fault
        assert not any(f.done() for f in delayed)
        assert all(f.result().status_code != 200 for f in delayed)


def test_sigterm_during_a_delayed_answer_still_saves_state(redis_server: LocalRedis, tmp_path: Path) -> None:
    state = tmp_path / "devcloud.json"
    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        start_devcloud_process(redis_url=redis_server.url, state_file=state) as proc,
    ):
        proc.client().create_qpu("saved-qpu")
        proc.client().set_fault("heartbeat", None, qpu_id="saved-qpu", count=1, delay_sec=60.0)
        pending = pool.submit(_stranger_heartbeat, proc.base_url, "saved-qpu")
        time.sleep(0.3)
        # 0, not the -9 of the SIGKILL that stop() sends when the process outlives its timeout
        assert proc.stop() == 0
        with pytest.raises(requests.RequestException):
            pending.result()
    assert "saved-qpu" in state.read_text()


def test_client_errors_carry_the_status(devcloud: DevCloudClient) -> None:
    with pytest.raises(DevCloudError) as caught:
        devcloud.mint_token("no-such-qpu")
    assert caught.value.status == 404
    with pytest.raises(DevCloudError) as unreachable:
        DevCloudClient("http://127.0.0.1:1", timeout_sec=1).info()
    assert unreachable.value.status is None


def test_cli_drives_a_running_simulator(
    devcloud_process: DevCloudProcess, qpu_id: str, bell_ir: dict[str, Any], tmp_path: Path
) -> None:
    runner = CliRunner()
    url = ["--url", devcloud_process.base_url]
    created = runner.invoke(devcloud_cli, ["create-qpu", qpu_id, "--num-qubits", "2", *url])
    assert created.exit_code == 0, created.output
    minted = runner.invoke(devcloud_cli, ["mint-token", qpu_id, *url])
    assert minted.exit_code == 0 and minted.output.strip().startswith("cnt_")
    ir_file = tmp_path / "bell.json"
    ir_file.write_text(json.dumps(bell_ir))
    submitted = runner.invoke(devcloud_cli, ["submit", qpu_id, "--ir", str(ir_file), "--count", "3", *url])
    assert submitted.exit_code == 0, submitted.output
    job_ids = submitted.output.split()
    assert len(job_ids) == 3
    shown = runner.invoke(devcloud_cli, ["results", "--qpu-id", qpu_id, *url])
    assert json.loads(shown.output) == dict.fromkeys(job_ids)
    refused = runner.invoke(devcloud_cli, ["mint-token", "no-such-qpu", *url])
    assert refused.exit_code == 1 and "404" in refused.output


def test_state_file_survives_a_restart(redis_server: LocalRedis, tmp_path: Path) -> None:
    state = tmp_path / "devcloud.json"
    with start_devcloud_process(redis_url=redis_server.url, state_file=state) as first:
        first.client().create_qpu("kept-qpu", num_qubits=4)
        token = first.client().mint_token("kept-qpu")
    assert not first.alive()
    assert state.exists()
    with start_devcloud_process(redis_url=redis_server.url, state_file=state) as second:
        assert second.client().qpu("kept-qpu")["num_qubits"] == 4
        answer = _post(f"{second.base_url}/api/internal/qpu/connect", {"machine_fingerprint": "h"}, token)
        assert answer.status_code == 200
    assert not second.alive()


def test_a_process_that_cannot_start_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DevCloudStartError, match="exited"):
        start_devcloud_process(host="203.0.113.1", log_path=tmp_path / "devcloud.log")


def test_each_simulator_is_a_process_of_its_own_that_a_kill_ends_alone(
    redis_server: LocalRedis, tmp_path: Path
) -> None:
    # Given two simulators forked from the fork server, one with a variable of its own
    first = start_devcloud_process(redis_url=redis_server.url, log_path=tmp_path / "first.log")
    second = start_devcloud_process(
        redis_url=redis_server.url,
        log_path=tmp_path / "second.log",
        required_headers={"X-Stage": "s3cret"},
    )
    try:
        assert first.pid != second.pid and os.getpid() not in (first.pid, second.pid)
        # When the first is killed outright
        first.process.kill()
        deadline = time.monotonic() + TIMEOUT_SEC
        while first.alive() and time.monotonic() < deadline:
            time.sleep(0.05)

        # Then it reports the signal as a subprocess does, its log holds its own output only, and the
        # second still answers, with the headers its own environment gave it
        assert first.stop() == -signal.SIGKILL
        assert "listening on" in (tmp_path / "first.log").read_text()
        assert "listening on" in (tmp_path / "second.log").read_text()
        health = f"{second.base_url}/api/internal/qpu/health"
        assert requests.get(health, timeout=TIMEOUT_SEC).status_code == 401
        assert requests.get(health, headers={"X-Stage": "s3cret"}, timeout=TIMEOUT_SEC).ok
    finally:
        first.stop()
        second.stop()
    assert second.process.returncode == 0
