"""The simulator app in-process: the node API's checks, the admin API, faults, jobs on Redis."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from flask.testing import FlaskClient

from coda_bridge.cloud.signing import Signer, generate_private_key_pem, public_key_pem
from coda_bridge.devtools.devcloud import create_app
from coda_bridge.devtools.devcloud.app_factory import devcloud_of
from coda_bridge.devtools.devcloud.store import Store
from coda_bridge.devtools.localredis import LocalRedis

CONNECT = "/api/internal/qpu/connect"
HEARTBEAT = "/api/internal/qpu/heartbeat"
WEBHOOK = "/api/internal/qpu/webhook"
BEAT = {"current_job": None, "last_job_at": None, "redis_healthy": True, "connectivity": None}


def _bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def _admin(client: FlaskClient, path: str, body: dict[str, Any] | None = None, status: int = 200) -> Any:
    response = client.post(f"/devcloud{path}", json=body or {})
    assert response.status_code == status, response.get_json()
    return response.get_json()


def _register(client: FlaskClient, qpu_id: str, **fields: Any) -> str:
    """Register a QPU and mint a token for it."""
    _admin(client, "/qpus", {"qpu_id": qpu_id, **fields}, 201)
    token: str = _admin(client, "/tokens", {"qpu_id": qpu_id}, 201)["token"]
    return token


def _provision(
    client: FlaskClient, qpu_id: str, fingerprint: str = "host-1"
) -> tuple[dict[str, Any], Signer]:
    token = _register(client, qpu_id, num_qubits=3)
    response = client.post(CONNECT, json={"machine_fingerprint": fingerprint}, headers=_bearer(token))
    assert response.status_code == 200, response.get_json()
    bundle = response.get_json()
    return bundle, Signer(bundle["jwt_private_key"], bundle["jwt_key_id"], qpu_id)


def _completed(job_id: str, counts: dict[str, int] | None = None) -> dict[str, Any]:
    counts = counts or {"00": 10}
    return {
        "job_id": job_id,
        "status": "completed",
        "counts": counts,
        "execution_time_ms": 1.5,
        "shots_completed": sum(counts.values()),
    }


def _submit(client: FlaskClient, body: dict[str, Any], status: int = 201) -> Any:
    return _admin(client, "/jobs", body, status)


def _stream(redis_server: LocalRedis, qpu_id: str) -> list[tuple[str, dict[str, str]]]:
    """The entries of a QPU's job stream on the cloud's Redis."""
    entries: list[tuple[str, dict[str, str]]] = redis_server.client().xrange(f"qpu:{qpu_id}:jobs")  # type: ignore[assignment]
    return entries


# -- connect -----------------------------------------------------------------------


def test_provisioning_bundle_has_every_field_and_a_pkcs8_key(app_client: FlaskClient, qpu_id: str) -> None:
    bundle, _ = _provision(app_client, qpu_id)
    assert bundle["qpu_id"] == qpu_id
    assert bundle["qpu_display_name"] == qpu_id
    assert bundle["native_gate_set"] == "cz"
    assert bundle["num_qubits"] == 3
    assert bundle["jwt_key_id"].startswith(f"qpu-{qpu_id}-")
    assert bundle["jwt_key_id"].rsplit("-", 1)[1].isdigit()
    assert bundle["redis_url"].startswith("redis://")
    assert bundle["cloud_base_url"] == "http://localhost"
    assert bundle["connect_path"] == CONNECT
    assert bundle["heartbeat_path"] == HEARTBEAT
    assert bundle["webhook_path"] == WEBHOOK
    assert bundle["register_path"] == "/api/internal/qpu/register"
    assert bundle["stream_key"] == f"qpu:{qpu_id}:jobs"
    assert bundle["webhook_url"] == f"http://localhost{WEBHOOK}"
    assert bundle["connection_mode"] == "https"
    assert bundle["vpn"] == {
        "required": False,
        "interface_hint": None,
        "check_interval_sec": None,
        "probe_targets": [],
        "client_profile_ovpn": None,
    }
    assert bundle["issued_at"] and bundle["connect_id"]
    pem = bundle["jwt_private_key"]
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, not "BEGIN RSA PRIVATE KEY"
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert key.key_size == 2048  # type: ignore[union-attr]
    stored = devcloud_of(app_client.application).store.require_qpu(qpu_id)
    assert stored.public_key_pem == public_key_pem(pem)
    assert stored.fingerprint == "host-1"


def test_each_provisioning_issues_a_fresh_key(app_client: FlaskClient, qpu_id: str) -> None:
    first, _ = _provision(app_client, qpu_id)
    token = _admin(app_client, "/tokens", {"qpu_id": qpu_id}, 201)["token"]
    second = app_client.post(
        CONNECT, json={"machine_fingerprint": "host-2"}, headers=_bearer(token)
    ).get_json()
    assert second["jwt_private_key"] != first["jwt_private_key"]
    assert second["jwt_key_id"] != first["jwt_key_id"]


def test_used_revoked_expired_and_unknown_tokens_are_refused(app_client: FlaskClient, qpu_id: str) -> None:
    token = _register(app_client, qpu_id)
    body = {"machine_fingerprint": "host-1"}
    assert app_client.post(CONNECT, json=body, headers=_bearer(token)).status_code == 200
    again = app_client.post(CONNECT, json=body, headers=_bearer(token))
    assert again.status_code == 401
    assert again.get_json() == {"error": "QPU node token has already been used"}

    revoked = _admin(app_client, "/tokens", {"qpu_id": qpu_id}, 201)["token"]
    assert _admin(app_client, "/tokens/revoke", {"token": revoked})["state"] == "revoked"
    answer = app_client.post(CONNECT, json=body, headers=_bearer(revoked))
    assert (answer.status_code, answer.get_json()) == (401, {"error": "QPU node token has been revoked"})

    expired = _admin(app_client, "/tokens", {"qpu_id": qpu_id, "expires_in_sec": 0}, 201)["token"]
    answer = app_client.post(CONNECT, json=body, headers=_bearer(expired))
    assert (answer.status_code, answer.get_json()) == (401, {"error": "QPU node token has expired"})

    answer = app_client.post(CONNECT, json=body, headers=_bearer("cnt_not-a-token"))
    assert answer.status_code == 401
    assert "error" in answer.get_json() and "detail" not in answer.get_json()
    assert app_client.post(CONNECT, json=body).status_code == 401


def test_a_refused_body_does_not_use_up_the_token(app_client: FlaskClient, qpu_id: str) -> None:
    token = _register(app_client, qpu_id, num_qubits=3)
    bad_bodies = [
        {},
        {"machine_fingerprint": ""},
        {"machine_fingerprint": "h", "connectivity": [[0]]},
        {"machine_fingerprint": "h", "connectivity": "0-1"},
        {"machine_fingerprint": "h", "connectivity": [[0, 3]]},
    ]
    for body in bad_bodies:
        answer = app_client.post(CONNECT, json=body, headers=_bearer(token))
        assert answer.status_code == 400, body
        assert set(answer.get_json()) == {"error"}
    assert "outside qubits 0..2" in answer.get_json()["error"]
    ok = app_client.post(
        CONNECT, json={"machine_fingerprint": "h", "connectivity": [[0, 1], [1, 2]]}, headers=_bearer(token)
    )
    assert ok.status_code == 200
    assert devcloud_of(app_client.application).store.require_qpu(qpu_id).connectivity == [[0, 1], [1, 2]]


def test_reconnect_with_a_jwt_answers_the_bundle_without_the_key(
    app_client: FlaskClient, qpu_id: str
) -> None:
    bundle, signer = _provision(app_client, qpu_id)
    answer = app_client.post(CONNECT, json={"machine_fingerprint": "host-1"}, headers=signer.authorization())
    assert answer.status_code == 200, answer.get_json()
    again = answer.get_json()
    assert "jwt_private_key" not in again
    assert again["jwt_key_id"] == bundle["jwt_key_id"]
    assert again["qpu_id"] == qpu_id

    mismatch = app_client.post(
        CONNECT, json={"machine_fingerprint": "host-2"}, headers=signer.authorization()
    )
    assert mismatch.status_code == 401
    assert "fingerprint" in mismatch.get_json()["error"]

    missing = app_client.post(CONNECT, json={}, headers=signer.authorization())
    assert missing.status_code == 400


def test_reconnect_of_an_unknown_qpu_is_409(app_client: FlaskClient, qpu_id: str) -> None:
    stranger = Signer(generate_private_key_pem(), f"qpu-{qpu_id}-1", qpu_id)
    answer = app_client.post(CONNECT, json={"machine_fingerprint": "h"}, headers=stranger.authorization())
    assert answer.status_code == 409
    _, signer = _provision(app_client, qpu_id)
    assert app_client.delete(f"/devcloud/qpus/{qpu_id}").get_json()["deleted"] is True
    answer = app_client.post(CONNECT, json={"machine_fingerprint": "host-1"}, headers=signer.authorization())
    assert answer.status_code == 409


def test_reconnect_with_a_forged_or_expired_jwt_is_401(app_client: FlaskClient, qpu_id: str) -> None:
    bundle, signer = _provision(app_client, qpu_id)
    forged = Signer(generate_private_key_pem(), bundle["jwt_key_id"], qpu_id)
    body = {"machine_fingerprint": "host-1"}
    assert app_client.post(CONNECT, json=body, headers=forged.authorization()).status_code == 401
    old = signer.sign(now=time.time() - 7200)
    answer = app_client.post(CONNECT, json=body, headers=_bearer(old))
    assert (answer.status_code, answer.get_json()) == (401, {"error": "token has expired"})


def test_vpn_mode_hands_out_the_profile_and_probe_targets(app_client: FlaskClient, qpu_id: str) -> None:
    profile = "client\ndev tun\nremote vpn.example 1194\n"
    token = _register(app_client, qpu_id, connection_mode="vpn", client_profile_ovpn=profile)
    bundle = app_client.post(CONNECT, json={"machine_fingerprint": "h"}, headers=_bearer(token)).get_json()
    assert bundle["connection_mode"] == "vpn"
    assert bundle["vpn"]["required"] is True
    assert bundle["vpn"]["client_profile_ovpn"] == profile
    assert bundle["vpn"]["check_interval_sec"] == 10
    assert bundle["vpn"]["probe_targets"] == ["http://localhost/api/internal/qpu/health"]


# -- heartbeat, webhook, health ---------------------------------------------------------------


def test_heartbeat_is_checked_and_recorded(app_client: FlaskClient, qpu_id: str) -> None:
    _, signer = _provision(app_client, qpu_id)
    beat = dict(BEAT, current_job="j-1", last_job_at="2026-01-01T00:00:00+00:00", connectivity=[[0, 1]])
    before = time.time()
    answer = app_client.post(HEARTBEAT, json=beat, headers=signer.authorization())
    assert answer.status_code == 200, answer.get_json()
    for bad in (
        {"redis_healthy": "yes"},
        {"current_job": 7},
        {"last_job_at": "yesterday"},
        {"connectivity": [[0, 9]]},
    ):
        assert (
            app_client.post(HEARTBEAT, json=dict(BEAT, **bad), headers=signer.authorization()).status_code
            == 400
        )
    assert app_client.post(HEARTBEAT, json=BEAT, headers=_bearer("a.b.c")).status_code == 401
    records = app_client.get(f"/devcloud/heartbeats?qpu_id={qpu_id}").get_json()["heartbeats"]
    assert [(r["status"], r["jwt_valid"]) for r in records] == [(200, True)] + [(400, True)] * 4
    first = records[0]
    assert first["accepted"] is True and first["body"] == beat
    assert before <= first["received_at"] <= time.time()
    accepted = app_client.get(f"/devcloud/heartbeats?qpu_id={qpu_id}&accepted=true").get_json()["heartbeats"]
    assert len(accepted) == 1
    view = app_client.get(f"/devcloud/qpus/{qpu_id}").get_json()
    assert view["online"] is True and view["connectivity"] == [[0, 1]]


def test_webhook_is_verified_checked_and_every_delivery_kept(
    app_client: FlaskClient, qpu_id: str, bell_ir: dict[str, Any]
) -> None:
    bundle, signer = _provision(app_client, qpu_id)
    job_id = _submit(app_client, {"qpu_id": qpu_id, "ir": bell_ir, "shots": 10, "expect": "noop"})["job_id"]
    url = f"{WEBHOOK}/{job_id}"
    assert app_client.post(url, json=_completed(job_id), headers=signer.authorization()).status_code == 200
    dup = app_client.post(url, json=_completed(job_id), headers=signer.authorization())
    assert dup.get_json()["duplicate"] is True
    changed = _completed(job_id, {"11": 10})
    assert app_client.post(url, json=changed, headers=signer.authorization()).status_code == 200

    wrong_kid = Signer(bundle["jwt_private_key"], "qpu-someone-else-1", qpu_id)
    forged = Signer(generate_private_key_pem(), bundle["jwt_key_id"], qpu_id)
    for headers in (
        wrong_kid.authorization(),
        forged.authorization(),
        _bearer(signer.sign(now=time.time() - 7200)),
    ):
        answer = app_client.post(url, json=_completed(job_id), headers=headers)
        assert answer.status_code == 401 and "error" in answer.get_json()
    assert (
        "kid"
        in app_client.post(url, json=_completed(job_id), headers=wrong_kid.authorization()).get_json()[
            "error"
        ]
    )

    job = app_client.get(f"/devcloud/jobs/{job_id}").get_json()
    assert job["delivery_count"] == 3
    assert job["result"] == _completed(job_id)
    assert [d["duplicate"] for d in job["deliveries"]] == [False, True, True]
    assert [d["content_mismatch"] for d in job["deliveries"]] == [False, False, True]
    assert job["content_mismatch"] is True
    assert job["expect_ok"] is False  # the third one is not the no-op's all-zero answer
    assert job["deliveries"][2]["expect_problems"]
    attempts = app_client.get(f"/devcloud/webhooks?job_id={job_id}").get_json()["webhooks"]
    assert [a["accepted"] for a in attempts] == [True] * 3 + [False] * 4
    assert app_client.get(f"/devcloud/results?qpu_id={qpu_id}").get_json()["results"] == {
        job_id: _completed(job_id)
    }


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"job_id": "other"}, "does not match"),
        ({"status": "done"}, "status"),
        ({"error": None}, "null"),
        ({"counts": {"0x": 1}}, "bitstring"),
        ({"counts": {"00": -1}}, "non-negative"),
        ({"execution_time_ms": "fast"}, "execution_time_ms"),
        ({"shots_completed": 1.5}, "shots_completed"),
    ],
)
def test_webhook_body_rules(
    app_client: FlaskClient, qpu_id: str, bell_ir: dict[str, Any], change: dict[str, Any], needle: str
) -> None:
    _, signer = _provision(app_client, qpu_id)
    job_id = _submit(app_client, {"qpu_id": qpu_id, "ir": bell_ir})["job_id"]
    answer = app_client.post(
        f"{WEBHOOK}/{job_id}", json=dict(_completed(job_id), **change), headers=signer.authorization()
    )
    assert answer.status_code == 400
    assert needle in answer.get_json()["error"]


def test_failed_results_and_unknown_jobs(
    app_client: FlaskClient, qpu_id: str, bell_ir: dict[str, Any]
) -> None:
    _, signer = _provision(app_client, qpu_id)
    job_id = _submit(app_client, {"qpu_id": qpu_id, "ir": bell_ir})["job_id"]
    url = f"{WEBHOOK}/{job_id}"
    too_long = {"job_id": job_id, "status": "failed", "error": "x" * 501}
    assert app_client.post(url, json=too_long, headers=signer.authorization()).status_code == 400
    failed = {
        "job_id": job_id,
        "status": "failed",
        "error": "Gate 'cnot' not legal for target 'cz' at index 1",
    }
    assert app_client.post(url, json=failed, headers=signer.authorization()).status_code == 200
    unknown = app_client.post(
        f"{WEBHOOK}/nope", json=dict(failed, job_id="nope"), headers=signer.authorization()
    )
    assert unknown.status_code == 404
    assert app_client.post(url, data="{}", headers=signer.authorization()).status_code == 400  # not JSON


def test_health_answers_get_and_head_without_auth(app_client: FlaskClient) -> None:
    answer = app_client.get("/api/internal/qpu/health")
    assert (answer.status_code, answer.get_json()) == (200, {"ok": True})
    assert app_client.head("/api/internal/qpu/health").status_code == 200


def test_unknown_routes_answer_json_errors(app_client: FlaskClient) -> None:
    answer = app_client.get("/nowhere")
    assert answer.status_code == 404 and "error" in answer.get_json()
    assert app_client.get(CONNECT).status_code == 405


# -- faults ---------------------------------------------------------------------------------


def test_fault_for_the_next_requests_then_normal(app_client: FlaskClient, qpu_id: str) -> None:
    _, signer = _provision(app_client, qpu_id)
    fault = _admin(app_client, "/faults", {"kind": "heartbeat", "status": 503, "count": 2}, 201)
    assert fault["remaining"] == 2
    codes = [
        app_client.post(HEARTBEAT, json=BEAT, headers=signer.authorization()).status_code for _ in range(3)
    ]
    assert codes == [503, 503, 200]
    records = app_client.get(f"/devcloud/heartbeats?qpu_id={qpu_id}").get_json()["heartbeats"]
    assert [(r["fault"], r["accepted"]) for r in records] == [(True, False), (True, False), (False, True)]
    assert app_client.get("/devcloud/faults").get_json()["faults"] == []


def test_fault_for_seconds_on_one_jobs_webhook(
    app_client: FlaskClient, qpu_id: str, bell_ir: dict[str, Any]
) -> None:
    _, signer = _provision(app_client, qpu_id)
    hit, spared = (
        _submit(app_client, {"qpu_id": qpu_id, "ir": bell_ir, "shots": 10})["job_id"] for _ in range(2)
    )
    window_sec = 0.5
    _admin(
        app_client, "/faults", {"kind": "webhook", "status": 502, "seconds": window_sec, "job_id": hit}, 201
    )
    closes_at = time.monotonic() + window_sec
    assert (
        app_client.post(f"{WEBHOOK}/{hit}", json=_completed(hit), headers=signer.authorization()).status_code
        == 502
    )
    assert (
        app_client.post(
            f"{WEBHOOK}/{spared}", json=_completed(spared), headers=signer.authorization()
        ).status_code
        == 200
    )
    assert (
        app_client.post(CONNECT, json={}, headers=signer.authorization()).status_code == 400
    )  # not a webhook
    time.sleep(max(0.0, closes_at - time.monotonic()) + 0.01)  # the window is time based: outlive it
    assert (
        app_client.post(f"{WEBHOOK}/{hit}", json=_completed(hit), headers=signer.authorization()).status_code
        == 200
    )


def test_lost_response_records_the_delivery_but_answers_the_fault(
    app_client: FlaskClient, qpu_id: str, bell_ir: dict[str, Any]
) -> None:
    _, signer = _provision(app_client, qpu_id)
    job_id = _submit(app_client, {"qpu_id": qpu_id, "ir": bell_ir, "shots": 10})["job_id"]
    _admin(app_client, "/faults", {"kind": "all", "status": 500, "count": 1, "lost_response": True}, 201)
    answer = app_client.post(f"{WEBHOOK}/{job_id}", json=_completed(job_id), headers=signer.authorization())
    assert answer.status_code == 500
    assert app_client.get(f"/devcloud/jobs/{job_id}").get_json()["delivery_count"] == 1


def test_fault_requests_are_checked(app_client: FlaskClient) -> None:
    for body in (
        {"kind": "nope", "status": 503, "count": 1},
        {"kind": "webhook", "status": 503},
        {"kind": "webhook", "status": 200, "count": 1},
    ):
        assert app_client.post("/devcloud/faults", json=body).status_code == 400
    _admin(app_client, "/faults", {"kind": "connect", "status": 503, "count": 5}, 201)
    assert app_client.delete("/devcloud/faults").get_json() == {"cleared": 1}


# -- jobs on the cloud's Redis ----------------------------------------------------------------


def test_submitted_job_lands_in_the_stream_with_four_string_fields(
    app_client: FlaskClient, qpu_id: str, bell_ir: dict[str, Any], redis_server: LocalRedis
) -> None:
    _register(app_client, qpu_id)
    answer = _submit(app_client, {"qpu_id": qpu_id, "ir": bell_ir, "shots": 100})
    job_id = answer["job_id"]
    entries = _stream(redis_server, qpu_id)
    assert len(entries) == 1
    stream_id, fields = entries[0]
    assert stream_id == answer["stream_id"]
    assert fields == {
        "job_id": job_id,
        "callback_url": f"http://localhost{WEBHOOK}/{job_id}",
        "ir_json": json.dumps(bell_ir, separators=(",", ":")),
        "shots": "100",
    }
    assert json.loads(fields["ir_json"]) == bell_ir


def test_invalid_circuits_are_refused_unless_sent_raw(
    app_client: FlaskClient, qpu_id: str, bell_ir: dict[str, Any], redis_server: LocalRedis
) -> None:
    _register(app_client, qpu_id)
    bad = dict(bell_ir, gates=[{"gate": "cnot", "qubits": [0, 1], "params": []}])
    refused = app_client.post("/devcloud/jobs", json={"qpu_id": qpu_id, "ir": bad})
    assert refused.status_code == 400
    assert "index 0" in refused.get_json()["error"]
    other_target = app_client.post(
        "/devcloud/jobs", json={"qpu_id": qpu_id, "ir": dict(bell_ir, target="cnot")}
    )
    assert other_target.status_code == 400
    raw = _submit(app_client, {"qpu_id": qpu_id, "ir_json": "{not json", "shots": "ten"})
    fields = _stream(redis_server, qpu_id)[-1][1]
    assert fields["job_id"] == raw["job_id"]
    assert (fields["ir_json"], fields["shots"]) == ("{not json", "ten")
    assert (
        app_client.post(
            "/devcloud/jobs", json={"qpu_id": qpu_id, "ir_json": "{", "validate": True}
        ).status_code
        == 400
    )
    assert app_client.post("/devcloud/jobs", json={"qpu_id": "nobody", "ir": bell_ir}).status_code == 404


QASM_BELL = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0],q[1];
measure q -> c;
"""


def test_qasm_is_compiled_for_the_qpus_gate_set(
    app_client: FlaskClient, qpu_id: str, redis_server: LocalRedis
) -> None:
    _register(app_client, qpu_id, native_gate_set="iswap")
    _submit(app_client, {"qpu_id": qpu_id, "qasm": QASM_BELL, "shots": 8})
    ir = json.loads(_stream(redis_server, qpu_id)[-1][1]["ir_json"])
    assert ir["target"] == "iswap" and ir["measurements"] == [0, 1]
    refused = app_client.post("/devcloud/jobs", json={"qpu_id": qpu_id, "qasm": "OPENQASM 2.0; nonsense;"})
    assert refused.status_code == 400 and refused.get_json()["error"].startswith("qasm: ")


def test_extra_and_omitted_fields_for_bad_input_tests(
    app_client: FlaskClient, qpu_id: str, bell_ir: dict[str, Any], redis_server: LocalRedis
) -> None:
    _register(app_client, qpu_id)
    body = {
        "qpu_id": qpu_id,
        "ir": bell_ir,
        "job_id": "j-x",
        "omit_fields": ["callback_url"],
        "extra_fields": {"junk": 1},
    }
    _submit(app_client, body)
    fields = _stream(redis_server, qpu_id)[-1][1]
    assert fields == {
        "job_id": "j-x",
        "ir_json": json.dumps(bell_ir, separators=(",", ":")),
        "shots": "1000",
        "junk": "1",
    }


def test_cancel_sets_the_key_and_the_job_view_reads_redis(
    app_client: FlaskClient, qpu_id: str, bell_ir: dict[str, Any], redis_server: LocalRedis
) -> None:
    _register(app_client, qpu_id)
    job_id = _submit(app_client, {"qpu_id": qpu_id, "ir": bell_ir})["job_id"]
    cloud = redis_server.client()
    cloud.hset(f"qpu:job:{job_id}:status", mapping={"state": "executing", "qpu_id": qpu_id})
    answer = _admin(app_client, f"/jobs/{job_id}/cancel")
    assert answer == {"job_id": job_id, "cancel_key": f"qpu:job:cancelled:{job_id}"}
    assert cloud.exists(f"qpu:job:cancelled:{job_id}") == 1
    view = app_client.get(f"/devcloud/jobs/{job_id}").get_json()
    assert view["status"] == {"state": "executing", "qpu_id": qpu_id}
    assert view["cancel_key_set"] is True and view["cancel_requested_at"] is not None


def test_bulk_submit_stamps_every_job(
    app_client: FlaskClient, qpu_id: str, bell_ir: dict[str, Any], redis_server: LocalRedis
) -> None:
    _register(app_client, qpu_id)
    answer = _admin(
        app_client, "/jobs/bulk", {"qpu_id": qpu_id, "ir": bell_ir, "count": 2500, "shots": 5}, 201
    )
    assert answer["count"] == 2500 and len(set(answer["job_ids"])) == 2500
    assert redis_server.client().xlen(f"qpu:{qpu_id}:jobs") == 2500
    jobs = app_client.get(f"/devcloud/jobs?qpu_id={qpu_id}").get_json()["jobs"]
    assert all(j["submitted_at"] and len(j["stream_ids"]) == 1 for j in jobs)
    stats = app_client.get(f"/devcloud/stats?qpu_id={qpu_id}").get_json()
    assert (stats["jobs"], stats["delivered"], stats["latency_ms"]) == (2500, 0, {"count": 0})


def test_jobs_need_a_cloud_redis(qpu_id: str, bell_ir: dict[str, Any]) -> None:
    client = create_app().test_client()
    _register(client, qpu_id)
    answer = client.post("/devcloud/jobs", json={"qpu_id": qpu_id, "ir": bell_ir})
    assert answer.status_code == 503 and "redis" in answer.get_json()["error"].lower()
    down = create_app(redis_url="redis://127.0.0.1:1/0").test_client()
    _register(down, qpu_id)
    answer = down.post("/devcloud/jobs", json={"qpu_id": qpu_id, "ir": bell_ir})
    assert answer.status_code == 503
    assert devcloud_of(down.application).store.job_views() == []


# -- the store on its own ------------------------------------------------------------------------


def test_state_file_round_trip(tmp_path: Path) -> None:
    store = Store()
    client = create_app(store).test_client()
    token = _register(client, "q-saved")
    path = tmp_path / "state.json"
    store.save(str(path))
    assert path.stat().st_mode & 0o777 == 0o600
    assert token not in path.read_text()
    again = Store()
    assert again.load(str(path)) is True
    assert again.check_token(token) == "q-saved"
    assert Store().load(str(tmp_path / "missing.json")) is False


# -- deployment protection (a staging cloud that demands a bypass header) --

BYPASS = {"x-vercel-protection-bypass": "bypass-unit-5f1c"}


def test_a_protected_node_api_refuses_requests_without_the_header_and_records_only_names() -> None:
    # given a simulator whose node API demands a bypass header, with a QPU and a token
    client = create_app(Store(), required_headers=BYPASS).test_client()
    token = _register(client, "qpu-prot")
    body = {"machine_fingerprint": "host-1"}

    # when a node connects without the header, with a wrong one, then with it
    bare = client.post(CONNECT, json=body, headers=_bearer(token))
    wrong = client.post(CONNECT, json=body, headers={**_bearer(token), "x-vercel-protection-bypass": "nope"})
    probe = client.head("/api/internal/qpu/health")
    good = client.post(CONNECT, json=body, headers={**_bearer(token), **BYPASS})

    # then the first three were refused with 401 before any check (the token is still unused), the last
    # provisioned; the refusals are listed with the header's name, never a value
    assert [bare.status_code, wrong.status_code, probe.status_code] == [401, 401, 401]
    assert bare.get_json() == {"error": "this deployment is protected: authentication required"}
    assert good.status_code == 200, good.get_json()
    refused = client.get("/devcloud/refused").get_json()["refused"]
    assert [(r["method"], r["path"], r["missing"]) for r in refused] == [
        ("POST", CONNECT, ["x-vercel-protection-bypass"]),
        ("POST", CONNECT, ["x-vercel-protection-bypass"]),
        ("HEAD", "/api/internal/qpu/health", ["x-vercel-protection-bypass"]),
    ]
    assert "nope" not in json.dumps(refused) and "bypass-unit-5f1c" not in json.dumps(refused)


def test_without_protection_nothing_is_refused() -> None:
    # given a simulator started as before (no required headers)
    client = create_app(Store()).test_client()

    # then its health answers and nothing is recorded as refused
    assert client.get("/api/internal/qpu/health").status_code == 200
    assert client.get("/devcloud/refused").get_json() == {"refused": []}
