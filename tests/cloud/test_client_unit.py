"""CloudClient against requests-mock: what goes on the wire, what is retried, and what each failure says.

PROTOCOL.md 1.1 (connect), 3 (heartbeat) and 5 (results).  No network and
no real sleep: the client's ``sleep`` records the backoff it asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import requests_mock as rm

from coda_bridge.cloud.http_client import CloudClient, cloud_message
from coda_bridge.cloud.signing import Signer, generate_private_key_pem, public_key_pem, verify_token
from coda_bridge.errors import HeartbeatRejected, NodeError, WebhookError
from coda_bridge.settings import Settings

BASE = "https://cloud.test"
CONNECT_URL = f"{BASE}/api/internal/qpu/connect"
HEARTBEAT_URL = f"{BASE}/api/internal/qpu/heartbeat"
CALLBACK_URL = f"{BASE}/api/internal/qpu/webhook/j-1"
TOKEN = "cqn_node_3f9a27c1d4e5b6a7"  # opaque one-time node token, not a JWT
KID = "qpu-unit-1710000000000"
QPU = "qpu-unit"
BUNDLE = {"qpu_id": QPU, "qpu_display_name": "Unit QPU", "native_gate_set": "cz", "num_qubits": 5}
CONNECT_BODY = {"machine_fingerprint": "host-7-123456789", "connectivity": [[0, 1], [1, 2]]}
HEARTBEAT_BODY = {
    "current_job": "j-9",
    "last_job_at": "2026-01-01T00:00:00.000Z",
    "redis_healthy": True,
    "connectivity": None,
}
RESULT = {
    "job_id": "j-1",
    "status": "completed",
    "counts": {"00": 510, "11": 490},
    "execution_time_ms": 42.5,
    "shots_completed": 1000,
}


@pytest.fixture(scope="module")
def key_pem() -> str:
    return generate_private_key_pem()


@pytest.fixture
def signer(key_pem: str) -> Signer:
    return Signer(key_pem, KID, QPU)


def make_settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {
        "webapp_url": BASE,
        "node_timeout_sec": 7,
        "webhook_timeout_sec": 3,
        "node_connect_headers": {"X-Site-Key": "site-key-42"},
    }
    values.update(changes)
    return Settings(**values)


@pytest.fixture
def sleeps() -> list[float]:
    """The pauses the client asked for, in order (it never really sleeps here)."""
    return []


@pytest.fixture
def client(sleeps: list[float]) -> Iterator[CloudClient]:
    made = CloudClient(make_settings(), sleep=sleeps.append)
    yield made
    made.close()


def bearer_of(request: Any) -> str:
    scheme, _, value = request.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    return value


# -- connect (PROTOCOL.md 1.1) --


def test_connect_posts_the_body_with_the_token_as_bearer_and_returns_the_bundle(
    client: CloudClient, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # given a cloud that accepts the connect
    requests_mock.post(CONNECT_URL, json=BUNDLE)

    # when the node connects with its one-time token
    bundle = client.connect(TOKEN, CONNECT_BODY)

    # then one request carried exactly the protocol's header and body, and the bundle came back
    assert bundle == BUNDLE
    assert requests_mock.call_count == 1
    sent = requests_mock.last_request
    assert sent.method == "POST"
    assert sent.url == CONNECT_URL
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.json() == CONNECT_BODY
    assert sent.timeout == 7
    assert sleeps == []


def test_connect_adds_every_node_connect_header(
    client: CloudClient, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # given connect headers configured by the operator
    requests_mock.post(CONNECT_URL, json=BUNDLE)
    extra = {"X-Site-Key": "site-key-42", "CF-Access-Client-Id": "abc.access"}
    connecting = CloudClient(make_settings(node_connect_headers=extra), sleep=sleeps.append)

    # when the node connects
    connecting.connect(TOKEN, CONNECT_BODY)

    # then each of them was sent, beside the bearer
    headers = requests_mock.last_request.headers
    assert headers["X-Site-Key"] == "site-key-42"
    assert headers["CF-Access-Client-Id"] == "abc.access"
    assert headers["Authorization"] == f"Bearer {TOKEN}"


def test_a_connect_header_named_authorization_does_not_replace_the_bearer(
    requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # given an operator header that collides with the bearer, in another case
    requests_mock.post(CONNECT_URL, json=BUNDLE)
    client = CloudClient(
        make_settings(node_connect_headers={"authorization": "Basic b3BlcmF0b3I6cHc="}), sleep=sleeps.append
    )

    # when the node connects
    client.connect(TOKEN, CONNECT_BODY)

    # then the cloud sees the node's bearer and only it
    assert requests_mock.last_request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_connect_with_a_jwt_sends_it_as_bearer(
    client: CloudClient, requests_mock: rm.Mocker, signer: Signer, key_pem: str
) -> None:
    # given a reconnect: the bearer is a JWT signed with the node's key
    requests_mock.post(CONNECT_URL, json=BUNDLE)
    jwt_bearer = signer.sign()

    # when the node connects with it
    client.connect(jwt_bearer, {"machine_fingerprint": "host-7-123456789"})

    # then the bearer is that JWT, verifiable with the node's public key, kid and sub
    sent = bearer_of(requests_mock.last_request)
    assert sent == jwt_bearer
    claims = verify_token(sent, public_key_pem(key_pem), expected_kid=KID, expected_sub=QPU)
    assert claims["iss"] == "coda"
    assert claims["exp"] - claims["iat"] == 3600
    assert requests_mock.last_request.json() == {"machine_fingerprint": "host-7-123456789"}


def test_500_500_200_is_retried_after_1_s_then_2_s(
    client: CloudClient, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # given a cloud that fails twice with 500, then accepts
    requests_mock.post(
        CONNECT_URL,
        [{"status_code": 500, "json": {"error": "boom"}}, {"status_code": 500}, {"json": BUNDLE}],
    )

    # when the node connects
    bundle = client.connect(TOKEN, CONNECT_BODY)

    # then the third attempt's bundle comes back, after pauses of 1 s and 2 s
    assert bundle == BUNDLE
    assert sleeps == [1.0, 2.0]
    assert requests_mock.call_count == 3
    for attempt in requests_mock.request_history:  # every attempt is the same request
        assert attempt.headers["Authorization"] == f"Bearer {TOKEN}"
        assert attempt.json() == CONNECT_BODY
        assert attempt.timeout == 7


def test_5xx_on_every_attempt_doubles_the_pause_and_gives_up_naming_the_clouds_message(
    requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # given four attempts allowed and a cloud that always answers 503
    requests_mock.post(CONNECT_URL, status_code=503, json={"error": "down for maintenance"})
    client = CloudClient(make_settings(node_connect_retries=4), sleep=sleeps.append)

    # when the node connects
    with pytest.raises(NodeError) as caught:
        client.connect(TOKEN, CONNECT_BODY)

    # then it tried four times, 1, 2 and 4 s apart, and says what the cloud said
    assert requests_mock.call_count == 4
    assert sleeps == [1.0, 2.0, 4.0]
    assert str(caught.value) == "cloud refused connect (503): down for maintenance (gave up after 4 attempts)"
    assert caught.value.status == 503
    assert type(caught.value) is NodeError


def test_one_allowed_attempt_means_no_retry_and_no_pause(
    requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # given node_connect_retries = 1
    requests_mock.post(CONNECT_URL, status_code=502, text="bad gateway")
    client = CloudClient(make_settings(node_connect_retries=1), sleep=sleeps.append)

    # when the connect fails
    with pytest.raises(NodeError, match=r"\(502\): bad gateway \(gave up after 1 attempts\)$"):
        client.connect(TOKEN, CONNECT_BODY)

    # then there was exactly one request and no pause
    assert requests_mock.call_count == 1
    assert sleeps == []


@pytest.mark.parametrize(
    "failure",
    [requests.ConnectionError, requests.ConnectTimeout, requests.ReadTimeout, requests.exceptions.SSLError],
)
def test_a_transport_error_is_retried_like_a_5xx(
    client: CloudClient, requests_mock: rm.Mocker, sleeps: list[float], failure: type[Exception]
) -> None:
    # given a cloud unreachable twice, then answering
    requests_mock.post(CONNECT_URL, [{"exc": failure}, {"exc": failure}, {"json": BUNDLE}])

    # when the node connects
    bundle = client.connect(TOKEN, CONNECT_BODY)

    # then it got through on the third attempt, after 1 s and 2 s
    assert bundle == BUNDLE
    assert sleeps == [1.0, 2.0]
    assert requests_mock.call_count == 3


def test_transport_errors_on_every_attempt_fail_with_one_line_and_no_status(
    client: CloudClient, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # given a cloud that never answers
    requests_mock.post(CONNECT_URL, exc=requests.ConnectTimeout)

    # when the node connects
    with pytest.raises(NodeError) as caught:
        client.connect(TOKEN, CONNECT_BODY)

    # then it names the URL and the kind of failure, once, with no status
    assert (
        str(caught.value)
        == f"cannot reach the cloud at {CONNECT_URL}: ConnectTimeout (gave up after 3 attempts)"
    )
    assert caught.value.status is None
    assert sleeps == [1.0, 2.0]


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "machine_fingerprint is required"),
        (401, "QPU node token has already been used"),
        (403, "forbidden"),
        (409, "QPU is not registered"),
        (429, "slow down"),
    ],
)
def test_a_4xx_fails_at_once_with_the_clouds_message(
    client: CloudClient, requests_mock: rm.Mocker, sleeps: list[float], status: int, message: str
) -> None:
    # given a cloud that refuses the node
    requests_mock.post(CONNECT_URL, status_code=status, json={"error": message})

    # when the node connects
    with pytest.raises(NodeError) as caught:
        client.connect(TOKEN, CONNECT_BODY)

    # then there is no second attempt and no pause, and the error is the cloud's
    assert requests_mock.call_count == 1
    assert sleeps == []
    assert str(caught.value) == f"cloud refused connect ({status}): {message}"
    assert caught.value.status == status


def test_a_4xx_after_a_5xx_stops_the_retries(
    client: CloudClient, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # given a 500, then a 401
    requests_mock.post(
        CONNECT_URL,
        [{"status_code": 500}, {"status_code": 401, "json": {"error": "QPU node token has expired"}}],
    )

    # when the node connects
    with pytest.raises(NodeError, match=r"^cloud refused connect \(401\): QPU node token has expired$"):
        client.connect(TOKEN, CONNECT_BODY)

    # then the 401 ended it: two attempts, one pause
    assert requests_mock.call_count == 2
    assert sleeps == [1.0]


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        ({"text": "<html>welcome</html>"}, "with a body that is not JSON: welcome"),
        ({"json": ["not", "an", "object"]}, "with JSON that is not an object"),
    ],
)
def test_a_2xx_that_is_not_a_json_object_is_a_node_error_not_retried(
    client: CloudClient, requests_mock: rm.Mocker, sleeps: list[float], answer: dict[str, Any], fragment: str
) -> None:
    # given a 200 whose body is not a bundle
    requests_mock.post(CONNECT_URL, status_code=200, **answer)

    # when the node connects
    with pytest.raises(NodeError) as caught:
        client.connect(TOKEN, CONNECT_BODY)

    # then it fails at once, saying so
    assert fragment in str(caught.value)
    assert caught.value.status == 200
    assert requests_mock.call_count == 1
    assert sleeps == []


def test_connect_paths_and_base_url_come_from_the_settings(requests_mock: rm.Mocker) -> None:
    # given a base URL with a trailing slash and a cloud-provided connect path
    url = "https://other.test/v2/connect"
    requests_mock.post(url, json=BUNDLE)
    client = CloudClient(make_settings(webapp_url="https://other.test/", connect_path="v2/connect"))

    # when the node connects
    client.connect(TOKEN, CONNECT_BODY)

    # then the request went to the joined URL
    assert requests_mock.last_request.url == url


# -- no secret in any error (README: Guarantees) --


def test_a_retry_log_and_the_final_error_never_show_the_token(
    client: CloudClient, requests_mock: rm.Mocker, caplog: pytest.LogCaptureFixture
) -> None:
    # given a gateway that echoes the Authorization header back in its error page
    page = f"<html><body><h1>502</h1><pre>Authorization: Bearer {TOKEN}</pre></body></html>"
    requests_mock.post(CONNECT_URL, status_code=502, text=page)

    # when every attempt fails
    with (
        caplog.at_level("WARNING", logger="coda_bridge.cloud.http_client"),
        pytest.raises(NodeError) as caught,
    ):
        client.connect(TOKEN, CONNECT_BODY)

    # then neither the error nor the retry warnings carry the token
    assert TOKEN not in str(caught.value)
    assert "[secret]" in str(caught.value)
    assert "Connect attempt 1/3 failed" in caplog.text
    assert "retrying in 1 s" in caplog.text
    assert "retrying in 2 s" in caplog.text
    assert TOKEN not in caplog.text


def test_a_jwt_echoed_in_a_json_error_is_masked(
    client: CloudClient, requests_mock: rm.Mocker, signer: Signer
) -> None:
    # given a cloud that quotes the offending JWT in its error field
    token = signer.sign()
    requests_mock.post(CONNECT_URL, status_code=401, json={"error": f"bad kid in {token}"})

    # when the node reconnects with that JWT
    with pytest.raises(NodeError) as caught:
        client.connect(token, CONNECT_BODY)

    # then the message keeps the cloud's words but not the token
    assert token not in str(caught.value)
    assert token.split(".")[2][:40] not in str(caught.value)  # nor the start of its signature
    assert str(caught.value) == "cloud refused connect (401): bad kid in [jwt]"


def test_an_opaque_token_quoted_by_the_cloud_never_reaches_the_error(
    client: CloudClient, requests_mock: rm.Mocker
) -> None:
    # given a cloud that quotes the rejected one-time token in its error
    requests_mock.post(
        CONNECT_URL, status_code=401, json={"error": f"QPU node token {TOKEN} has been revoked"}
    )

    # when the node provisions with it
    with pytest.raises(NodeError) as caught:
        client.connect(TOKEN, CONNECT_BODY)

    # then the token is not in the message
    assert TOKEN not in str(caught.value)


# -- heartbeat (PROTOCOL.md 3) --


def test_heartbeat_posts_the_body_with_a_fresh_jwt(
    client: CloudClient, requests_mock: rm.Mocker, signer: Signer, key_pem: str
) -> None:
    # given a cloud that accepts heartbeats
    requests_mock.post(HEARTBEAT_URL, json={"ok": True})

    # when the node sends one
    client.heartbeat(signer, HEARTBEAT_BODY)

    # then it carried the four fields as given, a JWT bearer of this node, and the node timeout
    sent = requests_mock.last_request
    assert sent.json() == HEARTBEAT_BODY
    assert sent.timeout == 7
    verify_token(bearer_of(sent), public_key_pem(key_pem), expected_kid=KID, expected_sub=QPU)
    assert sent.headers["X-Site-Key"] == "site-key-42"  # connect headers go with every request to the cloud


def test_heartbeat_goes_to_the_configured_path(requests_mock: rm.Mocker, signer: Signer) -> None:
    # given a heartbeat path from the cloud's bundle
    requests_mock.post(f"{BASE}/v2/beat", json={})
    client = CloudClient(make_settings(heartbeat_path="/v2/beat"))

    # when the node sends a heartbeat
    client.heartbeat(signer, HEARTBEAT_BODY)

    # then it went there
    assert requests_mock.call_count == 1


@pytest.mark.parametrize("status", [400, 401, 404, 500, 503])
def test_a_non_2xx_heartbeat_is_rejected_once_with_the_clouds_error(
    client: CloudClient, requests_mock: rm.Mocker, signer: Signer, sleeps: list[float], status: int
) -> None:
    # given a cloud that refuses heartbeats
    requests_mock.post(HEARTBEAT_URL, status_code=status, json={"error": "QPU is paused"})

    # when the node sends one
    with pytest.raises(HeartbeatRejected) as caught:
        client.heartbeat(signer, HEARTBEAT_BODY)

    # then it is a rejection (a NodeError) with the status and the cloud's words, and never retried here
    assert str(caught.value) == f"cloud rejected heartbeat ({status}): QPU is paused"
    assert caught.value.status == status
    assert isinstance(caught.value, NodeError)
    assert requests_mock.call_count == 1
    assert sleeps == []


def test_a_heartbeat_transport_error_is_a_node_error_not_a_rejection(
    client: CloudClient, requests_mock: rm.Mocker, signer: Signer
) -> None:
    # given a cloud that cannot be reached
    requests_mock.post(HEARTBEAT_URL, exc=requests.ConnectionError("connection refused"))

    # when the node sends a heartbeat
    with pytest.raises(NodeError) as caught:
        client.heartbeat(signer, HEARTBEAT_BODY)

    # then it says where and what, without a status
    assert type(caught.value) is NodeError
    assert str(caught.value) == f"heartbeat to {HEARTBEAT_URL} failed: ConnectionError"
    assert caught.value.status is None
    assert requests_mock.call_count == 1


@pytest.mark.parametrize("redirect", ["304 without Location", "302 to a login page"])
def test_a_3xx_heartbeat_answer_is_a_rejection(
    client: CloudClient, requests_mock: rm.Mocker, signer: Signer, redirect: str
) -> None:
    # given a cloud (or a proxy in front of it) that answers the heartbeat with a 3xx
    if redirect.startswith("304"):
        requests_mock.post(HEARTBEAT_URL, status_code=304)
    else:
        requests_mock.post(HEARTBEAT_URL, status_code=302, headers={"Location": f"{BASE}/login"})
        requests_mock.get(f"{BASE}/login", text="<html>sign in</html>")

    # when the node sends a heartbeat
    # then it is not taken as accepted
    with pytest.raises(HeartbeatRejected):
        client.heartbeat(signer, HEARTBEAT_BODY)


# -- results (PROTOCOL.md 5) --


def test_deliver_posts_the_result_with_a_jwt_and_the_webhook_timeout(
    client: CloudClient, requests_mock: rm.Mocker, signer: Signer, key_pem: str
) -> None:
    # given a callback that accepts results
    requests_mock.post(CALLBACK_URL, json={"ok": True})

    # when the node delivers a completed result
    client.deliver(CALLBACK_URL, signer, RESULT)

    # then the payload went as is, under this node's JWT, with the webhook timeout
    sent = requests_mock.last_request
    assert sent.json() == RESULT
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.timeout == 3
    verify_token(bearer_of(sent), public_key_pem(key_pem), expected_kid=KID, expected_sub=QPU)
    assert sent.headers["X-Site-Key"] == "site-key-42"  # a callback on the cloud's own origin gets them


def test_a_header_named_authorization_never_replaces_the_bearer_of_a_heartbeat_or_result(
    requests_mock: rm.Mocker, signer: Signer
) -> None:
    # given an operator header that collides with the bearer
    requests_mock.post(HEARTBEAT_URL, json={})
    requests_mock.post(CALLBACK_URL, json={})
    client = CloudClient(make_settings(node_connect_headers={"AUTHORIZATION": "Basic b3A6cHc="}))

    # when the node beats and delivers
    client.heartbeat(signer, HEARTBEAT_BODY)
    client.deliver(CALLBACK_URL, signer, RESULT)

    # then both carried the node's JWT
    for sent in requests_mock.request_history:
        assert sent.headers["Authorization"].startswith("Bearer eyJ")


def test_a_failed_result_is_posted_as_is(
    client: CloudClient, requests_mock: rm.Mocker, signer: Signer
) -> None:
    # given a failed result, as PROTOCOL.md 5 shows it
    requests_mock.post(CALLBACK_URL, status_code=204)
    failed = {
        "job_id": "j-2",
        "status": "failed",
        "error": "Gate 'cnot' not legal for target 'cz' at index 1",
    }

    # when it is delivered
    client.deliver(CALLBACK_URL, signer, failed)

    # then the body has exactly those three fields (nothing added, no nulls)
    assert requests_mock.last_request.json() == failed


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (502, True), (503, True), (400, False), (401, True), (403, True), (404, False)],
)
def test_a_non_2xx_delivery_is_a_webhook_error_that_says_whether_to_retry(
    client: CloudClient, requests_mock: rm.Mocker, signer: Signer, status: int, retryable: bool
) -> None:
    # given a callback that answers with an error
    requests_mock.post(CALLBACK_URL, status_code=status, json={"error": "result refused"})

    # when the node delivers
    with pytest.raises(WebhookError) as caught:
        client.deliver(CALLBACK_URL, signer, RESULT)

    # then the error has the status, the cloud's words, and the retry verdict; the client itself posted once
    assert str(caught.value) == f"cloud answered webhook with {status}: result refused"
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert requests_mock.call_count == 1


@pytest.mark.parametrize(
    "failure", [requests.ConnectionError, requests.ReadTimeout, requests.TooManyRedirects]
)
def test_a_delivery_transport_error_is_retryable_and_names_the_url(
    client: CloudClient, requests_mock: rm.Mocker, signer: Signer, failure: type[Exception]
) -> None:
    # given a callback that cannot be reached
    requests_mock.post(CALLBACK_URL, exc=failure)

    # when the node delivers
    with pytest.raises(WebhookError) as caught:
        client.deliver(CALLBACK_URL, signer, RESULT)

    # then the error says where and what, has no status, and is worth another attempt
    assert str(caught.value) == f"webhook to {CALLBACK_URL} failed: {failure.__name__}"
    assert caught.value.status is None
    assert caught.value.retryable is True


def test_a_delivery_error_never_shows_the_jwt(
    client: CloudClient, requests_mock: rm.Mocker, signer: Signer
) -> None:
    # given a proxy that echoes the request headers in its 503 page
    token = signer.sign()
    requests_mock.post(
        CALLBACK_URL, status_code=503, text=f"upstream down; you sent Authorization: Bearer {token}"
    )

    # when the node delivers
    with pytest.raises(WebhookError) as caught:
        client.deliver(CALLBACK_URL, signer, RESULT)

    # then the token is not in the error
    assert token not in str(caught.value)
    assert token.split(".")[2] not in str(caught.value)  # not even its signature


def test_a_redirected_delivery_is_not_counted_as_delivered(
    client: CloudClient, requests_mock: rm.Mocker, signer: Signer
) -> None:
    # given a callback behind a load balancer that redirects, and a page that answers any GET with 200
    requests_mock.post(CALLBACK_URL, status_code=302, headers={"Location": f"{BASE}/login"})
    requests_mock.get(f"{BASE}/login", text="<html>sign in</html>")

    # when the node delivers
    # then it must not return as if the cloud had the result
    with pytest.raises(WebhookError):
        client.deliver(CALLBACK_URL, signer, RESULT)
    assert all(r.method == "POST" for r in requests_mock.request_history)


# -- the session --


def test_the_environment_proxies_are_ignored_unless_asked_for() -> None:
    # given the default settings, and settings that opt in
    default, opted_in = CloudClient(make_settings()), CloudClient(make_settings(use_env_proxies=True))

    # then only the opted-in client reads HTTPS_PROXY and .netrc from the environment
    assert default.session.trust_env is False
    assert opted_in.session.trust_env is True
    assert default.session.headers["User-Agent"] == "coda-bridge"


# -- cloud_message: what of the cloud's answer goes into an error --


def _answer(requests_mock: rm.Mocker, **kwargs: Any) -> requests.Response:
    requests_mock.get(f"{BASE}/answer", **kwargs)
    return requests.get(f"{BASE}/answer", timeout=1)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "e", "detail": "d", "message": "m"}, "e"),
        ({"detail": "d", "message": "m"}, "d"),
        ({"message": "m"}, "m"),
        ({"error": {"code": 7}, "detail": "d"}, "d"),  # a field that is not a string is passed over
    ],
)
def test_cloud_message_prefers_error_then_detail_then_message(
    requests_mock: rm.Mocker, body: dict[str, Any], expected: str
) -> None:
    assert cloud_message(_answer(requests_mock, status_code=400, json=body)) == expected


def test_cloud_message_cuts_a_json_error_at_500_characters(requests_mock: rm.Mocker) -> None:
    message = cloud_message(_answer(requests_mock, status_code=400, json={"error": "x" * 900}))
    assert message == "x" * 500


def test_cloud_message_of_a_page_is_its_text_without_tags_cut_to_120_characters(
    requests_mock: rm.Mocker,
) -> None:
    # given an HTML error page longer than an excerpt
    page = "<html>\n<body><h1>Bad   Gateway</h1>\n<p>" + "y" * 300 + "</p></body></html>"

    # when it is quoted
    message = cloud_message(_answer(requests_mock, status_code=502, text=page))

    # then tags and runs of space are gone and it ends in an ellipsis at 120 characters
    assert message.startswith("Bad Gateway yyy")
    assert len(message) == 120
    assert message.endswith("...")


@pytest.mark.parametrize("body", ["", "   \n", "<html></html>"])
def test_cloud_message_of_an_empty_answer_says_so(requests_mock: rm.Mocker, body: str) -> None:
    assert cloud_message(_answer(requests_mock, status_code=500, text=body)) == "(empty body)"


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(None, True), (500, True), (599, True), (499, False), (400, False), (409, False)],
)
def test_webhook_error_is_retryable_on_transport_errors_and_5xx_only(
    status: int | None, retryable: bool
) -> None:
    assert WebhookError("x", status=status).retryable is retryable
