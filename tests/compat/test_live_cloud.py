"""Opt-in live smoke tests against the real Coda cloud, as the first runtime has them.

    CODA_RUN_E2E=1 CODA_E2E_NODE_TOKEN=<node token> pytest tests/compat/test_live_cloud.py
    CODA_RUN_VPN_E2E=1 ... (as root, with openvpn) adds the tunnel

They provision a node with the one-time token, send a signed heartbeat,
reconnect with the node's own key, and run one job through a whole node
(``coda-bridge start`` with the built-in simulator): the test puts the job
on the QPU's own stream in the cloud's Redis, and its signed result comes
back to a receiver on this machine (listed in ``allowed_callback_hosts``).
``CODA_E2E_WEBAPP_URL`` points at another cloud (default the production
one); ``CODA_E2E_STATE_DIR`` keeps the identity, so a rerun reconnects
instead of spending another token.  Without the variables they are skipped.
"""

from __future__ import annotations

import http.server
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization

from coda_bridge.circuits.ir import TARGETS
from coda_bridge.cloud.http_client import CloudClient
from coda_bridge.cloud.redis_keys import stream_key
from coda_bridge.devtools.localredis import LocalRedis, free_port
from coda_bridge.devtools.stack import wait_until
from coda_bridge.identity.connect import connect_node, load_node_settings, node_signer
from coda_bridge.identity.credentials import StatePaths
from coda_bridge.settings import Settings

RUN = os.environ.get("CODA_RUN_E2E") == "1"
RUN_VPN = os.environ.get("CODA_RUN_VPN_E2E") == "1"
TOKEN = os.environ.get("CODA_E2E_NODE_TOKEN", "")
WEBAPP_URL = os.environ.get("CODA_E2E_WEBAPP_URL", "https://coda.conductorquantum.com")
STATE_DIR = os.environ.get("CODA_E2E_STATE_DIR")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (RUN and TOKEN), reason="live cloud smoke tests: set CODA_RUN_E2E=1 and CODA_E2E_NODE_TOKEN"
    ),
]

#: Shots of the round-trip job.
SHOTS = 100
#: How long the round trip may take through the real cloud's Redis and back (seconds).
ROUND_TRIP_SEC = 120
#: How long ``coda-bridge start`` gets to drain and stop (seconds).
STOP_SEC = 60
#: Receiver's answer to each webhook.
ACCEPTED = b'{"ok": true}'


@pytest.fixture(scope="module")
def live_env() -> Iterator[dict[str, str]]:
    """The node's environment: no CODA_ variable from outside, a state directory, the live cloud."""
    state_dir = STATE_DIR or tempfile.mkdtemp(prefix="coda-live-e2e-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODA_")}
    env.update(
        {
            "CODA_STATE_DIR": state_dir,
            "CODA_WEBAPP_URL": WEBAPP_URL,
            "CODA_SETTINGS_FILES": str(Path(state_dir) / "no-settings.toml"),
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("CODA_")]:
            patch.delenv(name)
        for name, value in env.items():
            if name.startswith("CODA_"):
                patch.setenv(name, value)
        yield env


@pytest.fixture(scope="module")
def provisioned(live_env: dict[str, str]) -> Iterator[Settings]:
    """The node after its first connect (with the token, or its kept key on a rerun)."""
    vpn = None
    if RUN_VPN:
        from coda_bridge.vpn.openvpn import OpenVPNManager

        vpn = OpenVPNManager()
    settings = connect_node(load_node_settings(), token=TOKEN, vpn=vpn)
    yield settings
    if vpn is not None:
        vpn.stop(settings)


def test_provisioning_gives_the_node_an_identity_kept_in_private_files(provisioned: Settings) -> None:
    # then the cloud named the QPU, its key and its job Redis, and they are persisted 0600
    assert provisioned.has_identity
    assert provisioned.redis_url
    assert provisioned.native_gate_set in TARGETS
    paths = StatePaths(provisioned.state_dir)
    for path in (paths.config, paths.private_key):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_the_cloud_accepts_a_signed_heartbeat(provisioned: Settings) -> None:
    # when one heartbeat is posted, signed with the node's key
    client = CloudClient(provisioned)
    try:
        body = {"current_job": None, "last_job_at": None, "redis_healthy": True, "connectivity": None}
        client.heartbeat(node_signer(provisioned), body)  # raises HeartbeatRejected on a non-2xx
    finally:
        client.close()


def test_a_reconnect_with_the_nodes_own_key_keeps_its_identity(provisioned: Settings) -> None:
    # when the node connects again without a token
    again = connect_node(load_node_settings(), token=None)

    # then it is the same QPU, with a key id to sign with
    assert again.qpu_id == provisioned.qpu_id
    assert again.jwt_key_id


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Takes every POST as a webhook: its path, bearer token and JSON body go to ``server.got``."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        bearer = self.headers.get("Authorization", "").removeprefix("Bearer ")
        self.server.got.put((self.path, bearer, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ACCEPTED)))
        self.end_headers()
        self.wfile.write(ACCEPTED)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue[tuple[str, str, dict[str, Any]]]]]:
    """An HTTP server on this machine collecting webhooks; its base URL and what it got."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    server.got = queue.Queue()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host!s}:{port}", server.got
    finally:
        server.shutdown()
        server.server_close()


def _flip_circuit(target: str) -> dict[str, Any]:
    """rx(pi) on one qubit: legal for every target; the simulator answers "1" for every shot."""
    return {
        "version": "1.0",
        "target": target,
        "num_qubits": 1,
        "gates": [{"gate": "rx", "qubits": [0], "params": [3.141592653589793]}],
        "measurements": [0],
        "metadata": {"source_hash": "coda-bridge-live-e2e", "compiled_at": "2026-01-01T00:00:00Z"},
    }


def test_a_job_round_trip_through_the_clouds_stream(
    provisioned: Settings,
    live_env: dict[str, str],
    receiver: tuple[str, queue.Queue[tuple[str, str, dict[str, Any]]]],
) -> None:
    if provisioned.vpn_required and not RUN_VPN:
        pytest.skip("this QPU reaches its job Redis through the tunnel: set CODA_RUN_VPN_E2E=1 as well")
    # given a whole node (the built-in simulator) whose results may go to the local receiver
    base, got = receiver
    broker = LocalRedis().start()
    env = dict(live_env)
    env.update(
        {
            "CODA_BROKER_URL": broker.url,
            "CODA_EXECUTOR_FACTORY": "coda_bridge.executors.simulator:create_executor",
            "CODA_ALLOWED_CALLBACK_HOSTS": base,
            "CODA_HOST": "127.0.0.1",
            "CODA_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    node = subprocess.Popen(
        [sys.executable, "-m", "coda_bridge", "start"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cloud = redis.Redis.from_url(str(provisioned.redis_url), decode_responses=True)
    job_id = f"coda-bridge-e2e-{uuid.uuid4().hex}"
    try:
        # when a job is put on the QPU's stream, as the cloud puts one
        fields = {
            "job_id": job_id,
            "callback_url": f"{base}/webhook/{job_id}",
            "ir_json": json.dumps(_flip_circuit(provisioned.native_gate_set)),
            "shots": str(SHOTS),
        }
        cloud.xadd(stream_key(str(provisioned.qpu_id)), fields)
        path, bearer, body = got.get(timeout=ROUND_TRIP_SEC)

        # then the signed result came back, and the cloud's status hash says completed
        assert path == f"/webhook/{job_id}"
        assert body == {
            "job_id": job_id,
            "status": "completed",
            "counts": {"1": SHOTS},
            "execution_time_ms": body["execution_time_ms"],
            "shots_completed": SHOTS,
        }
        key = serialization.load_pem_private_key(str(provisioned.jwt_private_key_value).encode(), None)
        claims = jwt.decode(bearer, key.public_key(), algorithms=["RS256"])
        assert claims["sub"] == provisioned.qpu_id
        assert jwt.get_unverified_header(bearer)["kid"] == provisioned.jwt_key_id
        wait_until(
            lambda: cloud.hget(f"qpu:job:{job_id}:status", "state") == "completed",
            ROUND_TRIP_SEC,
            "the cloud's status hash to say completed",
        )
    finally:
        cloud.close()
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)  # to start alone: it drains its group in order
        output = node.communicate(timeout=STOP_SEC)[0].decode(errors="replace")
        broker.stop()
    assert node.returncode == 0, output[-3000:]


@pytest.mark.skipif(not RUN_VPN, reason="live VPN test: set CODA_RUN_VPN_E2E=1 (root and openvpn needed)")
def test_the_tunnel_from_the_clouds_profile_is_up_and_its_probes_answer(provisioned: Settings) -> None:
    from coda_bridge.vpn.guard import preflight, tun_interfaces

    if not provisioned.vpn_required:
        pytest.skip("this QPU is in https mode: the cloud gave no tunnel")
    # then a tun interface is up and every probe target answers through it
    assert tun_interfaces(provisioned.vpn_interface_hint)
    assert preflight(provisioned).ready
