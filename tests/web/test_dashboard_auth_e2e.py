"""The dashboard's password check under gunicorn: an Authorization header of any bytes is 401, not 500."""

from __future__ import annotations

import base64
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from coda_bridge.devtools.localredis import free_port
from coda_bridge.devtools.stack import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        importlib.util.find_spec("dramatiq_dashboard") is None,
        reason="dramatiq-dashboard is not installed (pip install --no-deps dramatiq-dashboard==0.4.0)",
    ),
]

PASSWORD = "s3cret-dashboard-pass"


def _private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
def web(redis_url: str, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``coda-bridge web`` (gunicorn) with the dashboard behind a password; its port and its output file."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODA_")}
    env.update(
        CODA_STATE_DIR=str(tmp_path / "state"),
        CODA_SETTINGS_FILES=str(tmp_path / "none.toml"),
        CODA_QPU_ID="q-dash",
        CODA_JWT_KEY_ID="k-dash",
        CODA_JWT_PRIVATE_KEY=_private_key_pem(),
        CODA_REDIS_URL=redis_url,
        CODA_BROKER_URL=redis_url,
        CODA_HOST="127.0.0.1",
        CODA_PORT=str(port),
        CODA_DASHBOARD_ENABLED="true",
        CODA_DASHBOARD_PASSWORD=PASSWORD,
    )
    output = tmp_path / "web.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "coda_bridge", "web"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: _health(port), 60, "gunicorn to answer /health")
        yield port, output
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _health(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _status_of(port: int, authorization: bytes) -> int:
    """The status code gunicorn answers for GET /dashboard/ with these raw header bytes."""
    request = (
        b"GET /dashboard/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
        + authorization
        + b"\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        head = conn.recv(64)
    return int(head.split(b" ", 2)[1])


def test_a_non_ascii_authorization_header_is_refused_with_401(web: tuple[int, Path]) -> None:
    port, output = web
    # When the header carries bytes that are not ASCII (latin-1, and UTF-8)
    statuses = [_status_of(port, header) for header in (b"Basic \xe9t\xe9", "Basic \u00e9\u00e9".encode())]
    # Then each is a plain 401, and nothing was logged as an error
    assert statuses == [401, 401]
    assert _status_of(port, b"Basic !!not-base64!!") == 401
    assert _status_of(port, b"Basic " + base64.b64encode(f"coda:{PASSWORD}".encode())) == 200
    text = output.read_text(errors="replace")
    assert "Traceback" not in text
    assert PASSWORD not in text
