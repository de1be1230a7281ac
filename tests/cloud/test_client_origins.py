"""CloudClient checks the URL it is about to send, follows no redirect, and keeps its bearer.

requests-mock sits below the client's own request preparation, so what it
records is what would have gone on the wire; a URL the client refuses makes
no request at all.  The live versions (real sockets, attacker listeners)
are in test_hostile_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests_mock as rm

from coda_bridge.cloud.http_client import CallbackRefused, CloudClient, WebhookRedirected
from coda_bridge.cloud.signing import Signer, generate_private_key_pem
from coda_bridge.errors import HeartbeatRejected, NodeError, WebhookError
from coda_bridge.settings import Settings

BASE = "https://cloud.test"
CONNECT_URL = f"{BASE}/api/internal/qpu/connect"
HEARTBEAT_URL = f"{BASE}/api/internal/qpu/heartbeat"
CALLBACK_URL = f"{BASE}/api/internal/qpu/webhook/j-1"
TOKEN = "cqn_node_origin_5e2f"
RESULT = {"job_id": "j-1", "status": "completed", "counts": {"0": 1}}
#: Every 3xx a server may answer with.
REDIRECT_CODES = [300, 301, 302, 303, 304, 305, 307, 308]


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(generate_private_key_pem(), "qpu-origin-1", "qpu-origin")


def make_settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {"webapp_url": BASE, "node_connect_headers": {"X-Site-Key": "site-key-7"}}
    values.update(changes)
    return Settings(**values)


#: Callback URLs the client refuses before it connects anywhere, by class.
REFUSED_CALLBACKS = [
    "https://evil.test\\@cloud.test/cb",
    "https://cloud.test\\@evil.test/cb",
    "https://cloud.test@evil.test/cb",
    "https://node:pw@cloud.test/cb",
    "https://evil.test#@cloud.test/cb",
    "https://%63loud.test/cb",
    "https://cloud.test\t/cb",
    "http://cloud.test/cb",
    "https://cloud.test:8443/cb",
    "https://evil.test/cb",
    "https://2130706434/cb",
    "https://[::ffff:127.0.0.2]/cb",
]


@pytest.mark.parametrize("url", REFUSED_CALLBACKS)
def test_a_callback_off_the_clouds_origin_is_refused_before_any_request(
    requests_mock: rm.Mocker, signer: Signer, url: str
) -> None:
    # given a client for the cloud at BASE
    client = CloudClient(make_settings())

    # when it is asked to post a result to the URL
    with pytest.raises(CallbackRefused) as caught:
        client.deliver(url, signer, RESULT)

    # then nothing was sent, and the refusal is final, not worth a retry
    assert requests_mock.call_count == 0
    assert caught.value.retryable is False
    assert isinstance(caught.value, WebhookError)
    assert str(caught.value).startswith("result not posted: ")
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        (["results.test"], "https://results.test/cb"),
        (["https://results.test:8443"], "https://results.test:8443/cb"),
        (["http://127.0.0.1:9000"], "http://127.0.0.1:9000/cb"),
    ],
)
def test_a_callback_on_an_allowed_origin_is_posted(
    requests_mock: rm.Mocker, signer: Signer, allowed: list[str], url: str
) -> None:
    # given an operator who allows another origin
    requests_mock.post(url, status_code=204)
    client = CloudClient(make_settings(allowed_callback_hosts=allowed))

    # when a result goes there
    client.deliver(url, signer, RESULT)

    # then it was posted, with the node's bearer and no connect header (they are for the cloud's origin)
    assert requests_mock.call_count == 1
    assert requests_mock.last_request.headers["Authorization"].startswith("Bearer eyJ")
    assert "X-Site-Key" not in requests_mock.last_request.headers


@pytest.mark.parametrize("code", REDIRECT_CODES)
def test_a_3xx_from_a_callback_is_a_retryable_failure_naming_its_location(
    requests_mock: rm.Mocker, signer: Signer, code: int
) -> None:
    # given a callback that redirects, and a page at the target that would answer 200
    requests_mock.post(CALLBACK_URL, status_code=code, headers={"Location": "https://evil.test/x"})
    requests_mock.register_uri(rm.ANY, "https://evil.test/x", text="ok")

    # when the node delivers
    with pytest.raises(WebhookRedirected) as caught:
        CloudClient(make_settings()).deliver(CALLBACK_URL, signer, RESULT)

    # then the one request was the POST, and the failure says where it was sent and is retried
    assert [r.url for r in requests_mock.request_history] == [CALLBACK_URL]
    assert str(caught.value) == (
        f"webhook at https://cloud.test:443 answered {code} (Location https://evil.test/x); "
        "redirects are not followed"
    )
    assert caught.value.status == code
    assert caught.value.retryable is True


@pytest.mark.parametrize("code", REDIRECT_CODES)
def test_a_3xx_to_connect_is_a_failed_attempt_and_is_retried_like_a_5xx(
    requests_mock: rm.Mocker, code: int
) -> None:
    # given a cloud that redirects connect requests
    requests_mock.post(CONNECT_URL, status_code=code, headers={"Location": "https://evil.test/connect"})
    requests_mock.register_uri(rm.ANY, "https://evil.test/connect", json={"qpu_id": "stolen"})
    sleeps: list[float] = []

    # when the node connects
    with pytest.raises(NodeError) as caught:
        CloudClient(make_settings(), sleep=sleeps.append).connect(TOKEN, {"machine_fingerprint": "h-1"})

    # then every attempt was a POST to the cloud, and the error names the Location
    assert [r.url for r in requests_mock.request_history] == [CONNECT_URL] * 3
    assert sleeps == [1.0, 2.0]
    assert f"cloud answered connect with {code} (Location https://evil.test/connect)" in str(caught.value)
    assert caught.value.status == code


@pytest.mark.parametrize("code", REDIRECT_CODES)
def test_a_3xx_to_a_heartbeat_is_a_rejection(requests_mock: rm.Mocker, signer: Signer, code: int) -> None:
    # given a cloud that redirects heartbeats
    requests_mock.post(HEARTBEAT_URL, status_code=code, headers={"Location": f"{BASE}/login"})
    requests_mock.get(f"{BASE}/login", text="sign in")

    # when the node sends one
    with pytest.raises(HeartbeatRejected, match=f"^cloud answered heartbeat with {code} ") as caught:
        CloudClient(make_settings()).heartbeat(signer, {"current_job": None})

    # then it is one rejected POST
    assert requests_mock.call_count == 1
    assert caught.value.status == code


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        (None, "no Location"),
        (
            "https://evil.test/\x1b[31mred\r\nX-Injected: 1",
            "Location https://evil.test/?[31mred?X-Injected:?1",
        ),
        ("https://evil.test/?t=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJxcHUifQ.c2lnbmF0dXJl", "[jwt]"),
        ("https://evil.test/" + "a" * 500, "..."),
    ],
)
def test_a_location_is_quoted_printable_masked_and_short(
    requests_mock: rm.Mocker, signer: Signer, location: str | None, shown: str
) -> None:
    # given a redirect whose Location is missing, has control characters, a token or is long
    headers = {"Location": location} if location is not None else {}
    requests_mock.post(CALLBACK_URL, status_code=302, headers=headers)

    # when the node delivers
    with pytest.raises(WebhookRedirected) as caught:
        CloudClient(make_settings()).deliver(CALLBACK_URL, signer, RESULT)

    # then the message shows it safely, on one line
    message = str(caught.value)
    assert shown in message
    assert "\n" not in message and "\x1b" not in message and "eyJzdWIi" not in message
    assert len(message) < 320


@pytest.mark.parametrize(
    "path", ["//evil.test/connect", "@evil.test/connect", "https://evil.test/connect", ":8443/connect"]
)
def test_connect_headers_go_only_to_webapp_urls_origin(requests_mock: rm.Mocker, path: str) -> None:
    # given a connect path written to point elsewhere
    requests_mock.register_uri(rm.ANY, rm.ANY, json={})
    client = CloudClient(make_settings(connect_path=path), sleep=lambda _: None)

    # when the node connects
    client.connect(TOKEN, {"machine_fingerprint": "h-1"})

    # then the one request went to the cloud's origin, with the header and the token
    sent = requests_mock.last_request
    assert requests_mock.call_count == 1
    assert (sent.scheme, sent.netloc) == ("https", "cloud.test")
    assert sent.headers["X-Site-Key"] == "site-key-7"
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"


def test_a_connect_url_that_leaves_the_origin_is_refused_before_sending(requests_mock: rm.Mocker) -> None:
    # given a connect path the strict reader refuses once joined to webapp_url
    client = CloudClient(make_settings(connect_path="/x\\@evil.test/connect"), sleep=lambda _: None)

    # when the node connects
    with pytest.raises(NodeError, match=r"^connect not sent: URL has a backslash$"):
        client.connect(TOKEN, {"machine_fingerprint": "h-1"})

    # then nothing was sent, not even once
    assert requests_mock.call_count == 0


@pytest.mark.parametrize("use_env_proxies", [True, False])
def test_netrc_never_replaces_the_bearer(
    requests_mock: rm.Mocker,
    signer: Signer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_env_proxies: bool,
) -> None:
    # given a .netrc with credentials for the cloud's host, read when environment proxies are on
    netrc = tmp_path / "netrc"
    netrc.write_text("machine cloud.test login node password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    for url in (CONNECT_URL, HEARTBEAT_URL, CALLBACK_URL):
        requests_mock.post(url, json={})
    client = CloudClient(make_settings(use_env_proxies=use_env_proxies))

    # when the node connects, beats and delivers
    client.connect(TOKEN, {"machine_fingerprint": "h-1"})
    client.heartbeat(signer, {"current_job": None})
    client.deliver(CALLBACK_URL, signer, RESULT)

    # then every request carried its bearer, never the .netrc's Basic auth
    sent = [r.headers["Authorization"] for r in requests_mock.request_history]
    assert sent[0] == f"Bearer {TOKEN}"
    assert all(value.startswith("Bearer ") for value in sent)
    assert len(sent) == 3


def test_the_bearer_auth_never_shows_its_token() -> None:
    # given the client's auth object for a request
    from coda_bridge.cloud.http_client import _Bearer

    # then its repr does not carry the token
    assert TOKEN not in repr(_Bearer(TOKEN))
