"""CloudClient against a real HTTP server on loopback: what requests-mock cannot show (cookies kept by the
session, headers as they reach the socket)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from coda_bridge.cloud.http_client import CloudClient
from coda_bridge.cloud.signing import Signer, generate_private_key_pem
from coda_bridge.settings import Settings

RESULT = {"job_id": "j-1", "status": "completed", "counts": {"00": 1}, "execution_time_ms": 1.0}


class _Cloud(BaseHTTPRequestHandler):
    """Answers every POST 200 and sets a load balancer's cookie; keeps each request's headers."""

    seen: list[dict[str, str]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(dict(self.headers))  # type: ignore[attr-defined]
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Set-Cookie", "lb=backend-2; Path=/")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def cloud() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Cloud)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_cookie_the_cloud_set_goes_back_with_the_next_result(cloud: ThreadingHTTPServer) -> None:
    # given a cloud whose load balancer pins a node to one backend with a cookie
    base = f"http://127.0.0.1:{cloud.server_address[1]}"
    client = CloudClient(Settings(webapp_url=base, webhook_timeout_sec=5))
    signer = Signer(generate_private_key_pem(), "kid-1", "qpu-wire")
    try:
        # when the node delivers two results
        client.deliver(f"{base}/api/internal/qpu/webhook/j-1", signer, RESULT)
        client.deliver(f"{base}/api/internal/qpu/webhook/j-2", signer, RESULT)
    finally:
        client.close()

    # then the second carries the cookie back, and both name the node's client and carry its bearer
    first, second = cloud.seen  # type: ignore[attr-defined]
    assert "Cookie" not in first
    assert second["Cookie"] == "lb=backend-2"
    assert first["User-Agent"] == second["User-Agent"] == "coda-bridge"
    assert first["Authorization"].startswith("Bearer ")
