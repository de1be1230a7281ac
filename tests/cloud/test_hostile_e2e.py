"""Hostile callback URLs, redirects and connect answers over real sockets: the attackers get nothing.

Two listeners stand in for the attacker, one on another loopback address
(127.0.0.2) and one on another port of the cloud's own host (127.0.0.1);
after every case they must have received zero requests.  Callback URLs go
through a whole node (LocalStack: the simulator, the bridge and the dramatiq
workers as real processes); redirects and connect answers go through the
node's own CloudClient and connect_node against listeners that play the
cloud.  README: Guarantees (results and JWTs go only to the cloud's own
origin, no redirect is followed; hostile input is refused).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import FAST_LIMITS, circuit, deliveries, executor_runs, stack_env, status

from coda_bridge.cloud.http_client import CloudClient, WebhookRedirected
from coda_bridge.cloud.signing import Signer, generate_private_key_pem
from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.errors import AuthError, HeartbeatRejected, NodeError
from coda_bridge.identity.connect import connect_node
from coda_bridge.identity.credentials import StatePaths
from coda_bridge.settings import Settings, load_settings

#: How long a case waits for the node to settle a job, in seconds.
SETTLE_SEC = 20.0
#: Every 3xx a server may answer with; none of them may be followed.
REDIRECT_CODES = [300, 301, 302, 303, 304, 307, 308]
KID = "qpu-hostile-1710000000000"
QPU = "qpu-hostile"
TOKEN = "cqn_node_hostile_4b1d"
SITE_HEADER = {"X-Site-Key": "site-key-hostile-42"}


@dataclass
class Seen:
    """One request a listener received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = field(default_factory=dict)


class Listener:
    """An HTTP server on one loopback address, in a thread: records every request, answers from a script.

    ``answers`` is consumed in order; once empty, every request gets ``default``.
    """

    def __init__(self, host: str) -> None:
        self.seen: list[Seen] = []
        self.answers: list[Answer] = []
        self.default = Answer()
        self._lock = threading.Lock()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with listener._lock:
                    listener.seen.append(Seen(self.command, self.path, dict(self.headers), body))
                    answer = listener.answers.pop(0) if listener.answers else listener.default
                data = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.host, self.port = host, self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"http://{self.netloc}"

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self.answers.clear()
            self.default = Answer()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Attackers:
    """The two listeners nothing may reach."""

    other_address: Listener  # 127.0.0.2
    other_port: Listener  # 127.0.0.1, another port than the cloud's

    def hits(self) -> list[Seen]:
        return [*self.other_address.seen, *self.other_port.seen]


@pytest.fixture(scope="module")
def attackers() -> Iterator[Attackers]:
    made = Attackers(Listener("127.0.0.2"), Listener("127.0.0.1"))
    yield made
    made.other_address.close()
    made.other_port.close()


@pytest.fixture
def clean_attackers(attackers: Attackers) -> Attackers:
    attackers.other_address.reset()
    attackers.other_port.reset()
    return attackers


@pytest.fixture(scope="module")
def key_pem() -> str:
    return generate_private_key_pem()


# -- callback URL forms, through a whole node --


@pytest.fixture(scope="module")
def allowed_site() -> Iterator[Listener]:
    """A results endpoint the operator allows (CODA_ALLOWED_CALLBACK_HOSTS, origin form)."""
    made = Listener("127.0.0.1")
    yield made
    made.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, allowed_site: Listener) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("hostile-stack")
    env = stack_env(workdir, **FAST_LIMITS, CODA_ALLOWED_CALLBACK_HOSTS=allowed_site.origin)
    with LocalStack(workdir, env=env) as node:
        yield node


def _cloud_netloc(stack: LocalStack) -> str:
    assert stack.devcloud is not None
    return stack.devcloud.base_url.removeprefix("http://").rstrip("/")


#: Callback URLs the node must refuse: {cloud} is the simulator's host:port, {evil} 127.0.0.2's
#: listener, {evil_port} the one on another port of the cloud's host, {port} the evil listener's port.
HOSTILE_CALLBACKS = [
    ("backslash: requests goes left, urlsplit right", "http://{evil}\\@{cloud}/cb"),
    ("backslash, the other way round", "http://{cloud}\\@{evil}/cb"),
    ("escaped backslash as userinfo", "http://{evil}%5C@{cloud}/cb"),
    ("userinfo naming the cloud", "http://{cloud}@{evil}/cb"),
    ("userinfo that would replace the bearer", "http://node:pw@{cloud}/cb"),
    ("fragment before the cloud", "http://{evil}#@{cloud}/cb"),
    ("query before the cloud", "http://{evil}?@{cloud}/cb"),
    ("tab before the cloud", "http://{evil}\t@{cloud}/cb"),
    ("space in the host", "http://{evil} /cb"),
    ("percent-encoded host", "http://%31%32%37.0.0.2:{port}/cb"),
    ("decimal IPv4", "http://2130706434:{port}/cb"),
    ("short IPv4", "http://127.2:{port}/cb"),
    ("IPv4-mapped IPv6", "http://[::ffff:127.0.0.2]:{port}/cb"),
    ("another host", "http://{evil}/cb"),
    ("upper-case scheme, another host", "HTTP://{evil}/cb"),
    ("another port of the cloud's host", "http://{evil_port}/cb"),
    ("https where the cloud is http", "https://{cloud}/cb"),
    ("no host", "http:///{cloud}/cb"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("case", "template"), HOSTILE_CALLBACKS, ids=[c[0] for c in HOSTILE_CALLBACKS])
def test_a_hostile_callback_url_fails_the_job_and_reaches_no_one(
    stack: LocalStack, clean_attackers: Attackers, allowed_site: Listener, case: str, template: str
) -> None:
    # given a job whose callback URL is written to leave the cloud's origin
    url = template.format(
        cloud=_cloud_netloc(stack),
        evil=clean_attackers.other_address.netloc,
        evil_port=clean_attackers.other_port.netloc,
        port=clean_attackers.other_address.port,
    )
    tag = f"hostile-{uuid.uuid4().hex[:10]}"

    # when the node takes it
    job_id = stack.cloud.submit(stack.qpu_id, circuit("ok", tag=tag), 10, callback_url=url)
    wait_until(
        lambda: status(stack, job_id).get("state") in ("failed", "completed"), SETTLE_SEC, "a final status"
    )

    # then it failed at the cloud with a reason, never ran, and nobody got a request
    assert status(stack, job_id)["state"] == "failed"
    assert "callback" in status(stack, job_id)["error"]
    assert executor_runs(stack, tag) == 0
    assert deliveries(stack, job_id) == []
    assert clean_attackers.hits() == []
    assert allowed_site.seen == []


@pytest.mark.e2e
def test_the_clouds_own_callback_and_an_allowed_origin_still_get_their_results(
    stack: LocalStack, clean_attackers: Attackers, allowed_site: Listener
) -> None:
    # given one job with the cloud's own callback and one whose callback the operator allows
    allowed_site.reset()
    own = stack.cloud.submit(stack.qpu_id, circuit(), 10)
    allowed = stack.cloud.submit(stack.qpu_id, circuit(), 10, callback_url=f"{allowed_site.origin}/results")

    # when the node runs them
    result = stack.cloud.wait_for_result(own, timeout_sec=SETTLE_SEC)
    wait_until(lambda: allowed_site.seen, SETTLE_SEC, "the allowed site's POST")

    # then each result went where it should, with the node's bearer, and nowhere else
    assert result["status"] == "completed"
    posted = allowed_site.seen[0]
    assert (posted.method, posted.path) == ("POST", "/results")
    assert json.loads(posted.body)["job_id"] == allowed
    assert posted.headers["Authorization"].startswith("Bearer eyJ")
    assert clean_attackers.hits() == []


@pytest.mark.e2e
@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirecting_callback_is_a_failed_attempt_and_the_result_is_not_lost(
    stack: LocalStack, clean_attackers: Attackers, allowed_site: Listener, code: int
) -> None:
    # given an allowed results endpoint that first redirects to the attacker, then accepts
    allowed_site.reset()
    allowed_site.answers = [Answer(code, {"Location": f"{clean_attackers.other_address.origin}/stolen"})]

    # when the node delivers a result there
    job_id = stack.cloud.submit(stack.qpu_id, circuit(), 10, callback_url=f"{allowed_site.origin}/r/{code}")
    wait_until(lambda: status(stack, job_id).get("state") == "completed", SETTLE_SEC, "the completed status")

    # then the redirect was not followed: the same result was POSTed again to the same place
    assert [(s.method, s.path) for s in allowed_site.seen] == [("POST", f"/r/{code}")] * 2
    assert json.loads(allowed_site.seen[0].body) == json.loads(allowed_site.seen[1].body)
    assert clean_attackers.hits() == []
    assert "redirects are not followed" in stack.log_tail("results", 200)


# -- redirects on connect, heartbeat and webhook requests, through the node's client --


@pytest.fixture(scope="module")
def cloud_listener() -> Iterator[Listener]:
    made = Listener("127.0.0.1")
    yield made
    made.close()


@pytest.fixture
def cloud(cloud_listener: Listener, clean_env: pytest.MonkeyPatch) -> Listener:
    cloud_listener.reset()
    return cloud_listener


def _settings(cloud: Listener, tmp_path: Path, **changes: Any) -> Settings:
    """A node that connected to ``cloud`` before: its webapp_url is persisted state, not the operator's."""
    overrides: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "node_connect_headers": SITE_HEADER,
        "node_machine_fingerprint": "host-hostile-1",
        "vpn_required": False,
    }
    overrides.update(changes)
    return load_settings(persisted={"webapp_url": cloud.origin}, overrides=overrides)


def _redirect_to(attackers: Attackers, code: int) -> Answer:
    """A redirect to one attacker or the other (by code), so both are tried."""
    target = attackers.other_address if code % 2 else attackers.other_port
    return Answer(code, {"Location": f"{target.origin}/stolen?x=1"})


@pytest.mark.parametrize("code", REDIRECT_CODES)
def test_a_redirected_connect_is_a_failed_attempt_and_is_not_followed(
    cloud: Listener, clean_attackers: Attackers, tmp_path: Path, code: int
) -> None:
    # given a cloud that answers every connect with a redirect to the attacker
    cloud.default = _redirect_to(clean_attackers, code)
    sleeps: list[float] = []
    client = CloudClient(_settings(cloud, tmp_path), sleep=sleeps.append)

    # when the node connects
    with pytest.raises(NodeError) as caught:
        client.connect(TOKEN, {"machine_fingerprint": "host-hostile-1"})

    # then every attempt was a POST to the cloud, none followed, and the error names the Location
    assert [s.method for s in cloud.seen] == ["POST"] * 3
    assert sleeps == [1.0, 2.0]
    assert f"with {code}" in str(caught.value)
    assert "/stolen?x=1" in str(caught.value)
    assert caught.value.status == code
    assert clean_attackers.hits() == []


@pytest.mark.parametrize("code", REDIRECT_CODES)
def test_a_redirected_heartbeat_is_a_rejection_and_is_not_followed(
    cloud: Listener, clean_attackers: Attackers, tmp_path: Path, key_pem: str, code: int
) -> None:
    # given a cloud that redirects heartbeats
    cloud.default = _redirect_to(clean_attackers, code)
    client = CloudClient(_settings(cloud, tmp_path))

    # when the node sends one
    with pytest.raises(HeartbeatRejected, match=f"with {code} .*redirects are not followed") as caught:
        client.heartbeat(Signer(key_pem, KID, QPU), {"current_job": None})

    # then the cloud got one POST and the attacker nothing
    assert [s.method for s in cloud.seen] == ["POST"]
    assert caught.value.status == code
    assert clean_attackers.hits() == []


@pytest.mark.parametrize("code", REDIRECT_CODES)
def test_a_redirected_result_is_a_retryable_failure_and_is_not_followed(
    cloud: Listener, clean_attackers: Attackers, tmp_path: Path, key_pem: str, code: int
) -> None:
    # given a callback on the cloud's origin that redirects
    cloud.default = _redirect_to(clean_attackers, code)
    client = CloudClient(_settings(cloud, tmp_path))

    # when the node posts a result there
    with pytest.raises(WebhookRedirected) as caught:
        client.deliver(f"{cloud.origin}/cb/j-1", Signer(key_pem, KID, QPU), {"job_id": "j-1"})

    # then it is a failed attempt worth another, the cloud got one POST, the attacker nothing
    assert caught.value.retryable is True
    assert "stolen" in str(caught.value)
    assert [(s.method, s.path) for s in cloud.seen] == [("POST", "/cb/j-1")]
    assert clean_attackers.hits() == []


#: Connect paths an operator (or a persisted file) might hold that try to leave webapp_url's origin.
HOSTILE_CONNECT_PATHS = [
    "//{evil}/connect",
    "@{evil}/connect",
    "http://{evil}/connect",
    "/..//{evil}/connect",
    ":{port}/connect",
]


@pytest.mark.parametrize("template", HOSTILE_CONNECT_PATHS)
def test_connect_headers_and_the_token_reach_only_the_clouds_origin(
    cloud: Listener, clean_attackers: Attackers, tmp_path: Path, template: str
) -> None:
    # given a connect path written to point elsewhere
    path = template.format(evil=clean_attackers.other_address.netloc, port=clean_attackers.other_port.port)
    client = CloudClient(_settings(cloud, tmp_path, connect_path=path), sleep=lambda _: None)

    # when the node connects
    client.connect(TOKEN, {"machine_fingerprint": "host-hostile-1"})

    # then the request, with the operator's header and the token, went to the cloud only
    assert len(cloud.seen) == 1
    assert cloud.seen[0].headers["X-Site-Key"] == SITE_HEADER["X-Site-Key"]
    assert cloud.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert clean_attackers.hits() == []


def test_env_proxies_still_work_when_asked_for_and_netrc_never_replaces_the_bearer(
    cloud: Listener,
    clean_attackers: Attackers,
    tmp_path: Path,
    key_pem: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given an operator's proxy (a listener playing one) and a .netrc naming the cloud's host
    proxy = Listener("127.0.0.1")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login node password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTP_PROXY", proxy.origin)
    for name in ("http_proxy", "all_proxy", "ALL_PROXY", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    signer = Signer(key_pem, KID, QPU)
    try:
        # when a node that opted in to environment proxies posts a result, and one that did not
        CloudClient(_settings(cloud, tmp_path, use_env_proxies=True)).deliver(
            f"{cloud.origin}/cb/j-1", signer, {"job_id": "j-1"}
        )
        CloudClient(_settings(cloud, tmp_path)).deliver(f"{cloud.origin}/cb/j-2", signer, {"job_id": "j-2"})
    finally:
        proxy.close()

    # then the first went through the proxy, the second straight to the cloud, both with the bearer
    assert [s.path for s in proxy.seen] == [f"{cloud.origin}/cb/j-1"]
    assert [s.path for s in cloud.seen] == ["/cb/j-2"]
    for seen in (*proxy.seen, *cloud.seen):
        assert seen.headers["Authorization"].startswith("Bearer eyJ")
    assert clean_attackers.hits() == []


# -- connect answers, through connect_node against a listener playing the cloud --


def _bundle(key_pem: str | None, **changes: Any) -> dict[str, Any]:
    made: dict[str, Any] = {
        "qpu_id": QPU,
        "qpu_display_name": "Hostile QPU",
        "native_gate_set": "cz",
        "num_qubits": 5,
        "jwt_key_id": KID,
        "redis_url": "redis://127.0.0.1:1/0",
        "connection_mode": "vpn",
        "vpn": {"required": True, "interface_hint": None, "probe_targets": [], "client_profile_ovpn": None},
    }
    if key_pem:
        made["jwt_private_key"] = key_pem
    made.update(changes)
    return made


def _weak_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


#: Connect answers the node must refuse: a field of the bundle and its hostile value ({evil}, {evil_port}
#: and {cloud} as above), and what the refusal names.
HOSTILE_BUNDLES = [
    ("base on another address", {"cloud_base_url": "http://{evil}"}, "moves the cloud"),
    ("base on another port of the cloud's host", {"cloud_base_url": "http://{evil_port}"}, "moves the cloud"),
    ("base as webapp_url", {"webapp_url": "http://{evil}/api"}, "moves the cloud"),
    ("base behind a backslash", {"cloud_base_url": "http://{evil}\\@{cloud}"}, "backslash"),
    ("base with userinfo", {"cloud_base_url": "http://{cloud}@{evil}"}, "userinfo"),
    ("heartbeat path to another origin", {"heartbeat_path": "http://{evil}/hb"}, "heartbeat_path"),
    ("webhook path to another origin", {"webhook_path": "//{evil}/wh"}, "webhook_path"),
    ("connect path with a backslash", {"connect_path": "\\\\{evil}/c"}, "connect_path"),
    ("check interval of 1e-9 s", {"vpn": {"required": True, "check_interval_sec": 1e-9}}, "check_interval"),
    ("check interval of a day", {"vpn": {"required": True, "check_interval_sec": 86400}}, "check_interval"),
    ("profile of 1 MB", {"vpn": {"required": True, "client_profile_ovpn": "x" * 1_000_000}}, "profile"),
    ("probe targets as one string", {"vpn": {"probe_targets": "http://{evil}/"}}, "probe_targets"),
]


@pytest.mark.parametrize(("case", "changes", "named"), HOSTILE_BUNDLES, ids=[c[0] for c in HOSTILE_BUNDLES])
def test_a_hostile_connect_answer_is_refused_before_anything_is_written(
    cloud: Listener,
    clean_attackers: Attackers,
    tmp_path: Path,
    key_pem: str,
    case: str,
    changes: dict[str, Any],
    named: str,
) -> None:
    # given a cloud whose connect answer carries one hostile field
    netlocs = {
        "evil": clean_attackers.other_address.netloc,
        "evil_port": clean_attackers.other_port.netloc,
        "cloud": cloud.netloc,
    }
    filled = json.loads(json.dumps(changes), object_hook=lambda d: _fill(d, netlocs))
    cloud.default = Answer(200, {}, _bundle(key_pem, **filled))
    settings = _settings(cloud, tmp_path)

    # when the node provisions
    with pytest.raises(NodeError) as caught:
        connect_node(settings, token=TOKEN, client=CloudClient(settings, sleep=lambda _: None))

    # then the answer is refused naming the field, nothing was persisted, and the attacker got nothing
    assert named in str(caught.value)
    assert key_pem.splitlines()[1] not in str(caught.value)
    assert not StatePaths(settings.state_dir).config.exists()
    assert not StatePaths(settings.state_dir).private_key.exists()
    assert len(cloud.seen) == 1
    assert clean_attackers.hits() == []


def _fill(mapping: dict[str, Any], netlocs: dict[str, str]) -> dict[str, Any]:
    return {k: v.format(**netlocs) if isinstance(v, str) and len(v) < 200 else v for k, v in mapping.items()}


@pytest.mark.parametrize("key", ["weak", "not RSA"])
def test_a_connect_answer_with_a_weak_or_foreign_key_is_refused(
    cloud: Listener, tmp_path: Path, key: str
) -> None:
    # given a cloud handing out an RSA-1024 key, or an EC key
    if key == "weak":
        pem = _weak_key()
    else:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        pem = (
            ec.generate_private_key(ec.SECP256R1())
            .private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            .decode()
        )
    cloud.default = Answer(200, {}, _bundle(pem))
    settings = _settings(cloud, tmp_path)

    # when the node provisions
    with pytest.raises(AuthError, match="RSA") as caught:
        connect_node(settings, token=TOKEN, client=CloudClient(settings, sleep=lambda _: None))

    # then nothing was written and the key is not in the message
    assert pem.splitlines()[1] not in str(caught.value)
    assert not StatePaths(settings.state_dir).private_key.exists()


def test_a_move_the_operator_allowed_is_applied_and_heartbeats_follow_it(
    cloud: Listener, clean_attackers: Attackers, tmp_path: Path, key_pem: str
) -> None:
    # given an operator who allows the cloud's new home, and a cloud that moves there
    new_home = Listener("127.0.0.1")
    try:
        cloud.default = Answer(200, {}, _bundle(key_pem, cloud_base_url=new_home.origin))
        settings = _settings(cloud, tmp_path, allowed_cloud_origins=[new_home.origin])

        # when the node provisions, then sends a heartbeat with what it was given
        applied = connect_node(settings, token=TOKEN, client=CloudClient(settings, sleep=lambda _: None))
        CloudClient(applied).heartbeat(Signer(key_pem, KID, QPU), {"current_job": None})
    finally:
        new_home.close()

    # then the heartbeat went to the new home, now the cloud's own origin (the operator listed it), with the
    # operator's connect header as every request to the cloud has it
    assert applied.webapp_url == new_home.origin
    assert [s.path for s in new_home.seen] == ["/api/internal/qpu/heartbeat"]
    assert new_home.seen[0].headers["X-Site-Key"] == SITE_HEADER["X-Site-Key"]
    assert clean_attackers.hits() == []
