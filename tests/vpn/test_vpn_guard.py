"""The VPN guard: interface, resolution and HEAD probes, and the shared state with its expiry."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.backoff
import redis.retry

from coda_bridge.devtools.localredis import free_port
from coda_bridge.errors import VPNError
from coda_bridge.settings import Settings
from coda_bridge.state.node_state import NodeState
from coda_bridge.vpn.guard import VpnGuard, preflight, state_ttl_sec, tun_interfaces
from coda_bridge.vpn.states import BOOTING, DEGRADED, READY, VPN_UNAVAILABLE

MISSING_INTERFACE = "codanope0"


class Switch:
    """An interface lister the test turns on and off."""

    def __init__(self, up: bool = True) -> None:
        self.up = up

    def __call__(self, hint: str | None) -> list[str]:
        return ["tun9"] if self.up else []


@pytest.fixture
def node_state(redis_url: str) -> Iterator[NodeState]:
    client = redis.Redis.from_url(redis_url)
    yield NodeState(client, "qpu-guard")
    client.close()


@pytest.fixture
def no_dns_for_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names under ``.invalid`` fail at once, so no query for them ever leaves the machine."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.rstrip(".").endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# -- interfaces --


def test_a_hinted_interface_counts_only_when_it_exists_and_is_up() -> None:
    assert tun_interfaces("lo") == ["lo"]
    assert tun_interfaces(MISSING_INTERFACE) == []
    assert tun_interfaces("../../etc") == []
    assert tun_interfaces("") == tun_interfaces()  # an empty hint is no hint


def test_without_a_hint_only_tunnel_devices_count() -> None:
    found = tun_interfaces()
    assert "lo" not in found
    assert all(isinstance(name, str) and name for name in found)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not os.path.exists("/dev/net/tun"),
    reason="needs root, ip and /dev/net/tun to make a tun device",
)
def test_a_tun_device_that_is_down_or_unused_is_no_tunnel() -> None:
    name = f"codadn{os.getpid() % 100000}"
    subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tun"], check=True)
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True)  # up, but no process holds it
        assert name not in tun_interfaces()
        assert tun_interfaces(name) == []
    finally:
        subprocess.run(["ip", "tuntap", "del", "dev", name, "mode", "tun"], check=True)


# -- checks --


def test_every_check_passes_when_the_vpn_is_not_required(
    make_settings: Callable[..., Settings], no_dns_for_invalid: None
) -> None:
    settings = make_settings(
        vpn_required=False, vpn_interface_hint=MISSING_INTERFACE, vpn_probe_targets=["http://x.invalid/"]
    )
    check = VpnGuard(settings).check()
    assert check.state == READY and check.ready
    assert check.detail == "VPN not required"


def test_ready_with_an_up_interface_and_an_answering_probe(
    make_settings: Callable[..., Settings], probe_server: Any
) -> None:
    settings = make_settings(vpn_interface_hint="lo", vpn_probe_targets=[probe_server.url + "/api/health"])
    guard = VpnGuard(settings)
    assert guard.state == BOOTING
    check = guard.check()
    assert check.state == READY, check.detail
    assert guard.state == READY
    assert probe_server.paths == ["/api/health"]


def test_the_default_probe_target_is_the_clouds_health_url_as_in_the_first_runtime(
    make_settings: Callable[..., Settings], probe_server: Any
) -> None:
    # given a required VPN and no configured probe targets
    settings = make_settings(vpn_interface_hint="lo", webapp_url=probe_server.url)

    # when the guard checks
    check = VpnGuard(settings).check()

    # then it probed {webapp_url}/api/internal/qpu/health, and only that
    assert check.ready, check.detail
    assert probe_server.paths == ["/api/internal/qpu/health"]


def test_without_a_required_vpn_there_is_no_default_probe_target(
    make_settings: Callable[..., Settings],
) -> None:
    # given a VPN that is not required and no configured targets
    settings = make_settings(vpn_required=False, webapp_url="https://cloud.test")

    # then nothing is probed (the first runtime probes nothing in https mode), and configured targets stay
    assert VpnGuard(settings).probe_targets() == []
    configured = settings.replace(vpn_probe_targets=["https://cloud.test/x"])
    assert VpnGuard(configured).probe_targets() == ["https://cloud.test/x"]


@pytest.mark.parametrize("status", [200, 204, 301, 401, 404, 405, 499])
def test_an_answer_below_500_passes(
    make_settings: Callable[..., Settings], probe_server: Any, status: int
) -> None:
    # given a probe target answering with a status below 500 (a 4xx still proves the path through the tunnel)
    probe_server.status = status
    settings = make_settings(vpn_interface_hint="lo", vpn_probe_targets=[probe_server.url])

    # then the check passes
    assert VpnGuard(settings).check().ready


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_answer_fails_the_check(
    make_settings: Callable[..., Settings], probe_server: Any, status: int
) -> None:
    # given a probe target behind a broken gateway
    probe_server.status = status
    settings = make_settings(vpn_interface_hint="lo", vpn_probe_targets=[probe_server.url + "/health"])

    # when the guard checks
    check = VpnGuard(settings).check()

    # then the VPN is not ready, and the detail names the target and the status
    assert check.state == VPN_UNAVAILABLE
    assert check.detail == (
        f"probe {probe_server.url}/health answered {status}: the cloud or a gateway before it is failing"
    )


def test_connect_headers_go_only_with_probes_to_the_clouds_own_origin(
    make_settings: Callable[..., Settings], probe_server: Any
) -> None:
    # given connect headers, and probe targets on the cloud's origin and on another port (another origin)
    other = probe_server.url.replace("127.0.0.1", "localhost")
    settings = make_settings(
        vpn_interface_hint="lo",
        webapp_url=probe_server.url,
        node_connect_headers={"X-Bypass": "bypass-secret-9", "Authorization": "Basic b3A6cHc="},
        vpn_probe_targets=[probe_server.url + "/own", other + "/foreign"],
    )

    # when the guard checks
    assert VpnGuard(settings).check().ready

    # then the probe to the cloud's origin carried the header (never an Authorization), the other none
    own, foreign = probe_server.headers
    assert probe_server.paths == ["/own", "/foreign"]
    assert own["X-Bypass"] == "bypass-secret-9"
    assert "Authorization" not in own
    assert "X-Bypass" not in foreign


def test_a_missing_hinted_interface_fails(make_settings: Callable[..., Settings], probe_server: Any) -> None:
    settings = make_settings(vpn_interface_hint=MISSING_INTERFACE, vpn_probe_targets=[probe_server.url])
    check = VpnGuard(settings).check()
    assert check.state == VPN_UNAVAILABLE
    assert check.detail == f"interface {MISSING_INTERFACE} is missing or down"
    assert probe_server.paths == []  # no probing without a tunnel


def test_no_tun_interface_fails(make_settings: Callable[..., Settings], probe_server: Any) -> None:
    settings = make_settings(vpn_probe_targets=[probe_server.url])
    check = VpnGuard(settings, interfaces=Switch(up=False)).check()
    assert (check.state, check.detail) == (VPN_UNAVAILABLE, "no tun interface")


def test_an_unresolvable_probe_host_fails(
    make_settings: Callable[..., Settings], no_dns_for_invalid: None
) -> None:
    settings = make_settings(vpn_interface_hint="lo", vpn_probe_targets=["https://cloud.coda.invalid/health"])
    check = VpnGuard(settings).check()
    assert check.state == VPN_UNAVAILABLE
    assert check.detail == "probe host cloud.coda.invalid does not resolve"


def test_a_port_with_nothing_listening_fails(make_settings: Callable[..., Settings]) -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    settings = make_settings(vpn_interface_hint="lo", vpn_probe_targets=[url])
    check = VpnGuard(settings).check()
    assert check.state == VPN_UNAVAILABLE
    assert check.detail.startswith(f"probe {url} did not answer (")


def test_a_probe_that_never_answers_times_out(make_settings: Callable[..., Settings]) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        settings = make_settings(vpn_interface_hint="lo", vpn_probe_targets=[url])
        check = VpnGuard(settings, probe_timeout_sec=0.3).check()
    assert check.state == VPN_UNAVAILABLE
    assert check.detail == f"probe {url} did not answer within 0.3 s"


def test_details_never_show_credentials_or_queries_of_a_probe_url(
    make_settings: Callable[..., Settings],
) -> None:
    url = f"http://probe-user:hunter2@127.0.0.1:{free_port()}/health?token=s3cret#x"
    settings = make_settings(vpn_interface_hint="lo", vpn_probe_targets=[url])
    detail = VpnGuard(settings).check().detail
    assert "hunter2" not in detail and "s3cret" not in detail and "probe-user" not in detail
    bad = make_settings(vpn_interface_hint="lo", vpn_probe_targets=["ftp://u:hunter2@host/x"])
    assert VpnGuard(bad).check().detail == "probe target ftp://host/x is not an http(s) URL"


# -- states --


def test_states_go_booting_ready_degraded_and_back_with_warnings(
    make_settings: Callable[..., Settings],
    probe_server: Any,
    node_state: NodeState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    switch = Switch()
    guard = VpnGuard(make_settings(vpn_probe_targets=[probe_server.url]), node_state, interfaces=switch)
    assert node_state.vpn_state() == BOOTING
    caplog.set_level(logging.INFO, logger="coda_bridge.vpn.guard")
    assert guard.check().state == READY
    assert node_state.vpn_state() == READY
    switch.up = False
    assert guard.check().state == DEGRADED
    assert guard.check().state == DEGRADED
    assert node_state.vpn_state() == DEGRADED
    switch.up = True
    assert guard.check().state == READY
    transitions = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert transitions == [
        ("INFO", "VPN state booting -> ready: tunnel up on tun9; 1 probe target(s) answered"),
        ("WARNING", "VPN state ready -> degraded: no tun interface"),
        ("INFO", "VPN state degraded -> ready: tunnel up on tun9; 1 probe target(s) answered"),
    ]


def test_failing_before_ever_being_ready_is_vpn_unavailable(
    make_settings: Callable[..., Settings], node_state: NodeState, caplog: pytest.LogCaptureFixture
) -> None:
    guard = VpnGuard(make_settings(), node_state, interfaces=Switch(up=False))
    caplog.set_level(logging.WARNING, logger="coda_bridge.vpn.guard")
    assert guard.check().state == VPN_UNAVAILABLE
    assert guard.check().state == VPN_UNAVAILABLE
    assert node_state.vpn_state() == VPN_UNAVAILABLE
    assert [r.getMessage() for r in caplog.records] == [
        "VPN state booting -> vpn_unavailable: no tun interface"
    ]


def test_a_fresh_guard_learns_from_the_shared_state_that_the_tunnel_was_ready(
    make_settings: Callable[..., Settings], probe_server: Any, node_state: NodeState
) -> None:
    settings = make_settings(vpn_probe_targets=[probe_server.url])
    assert VpnGuard(settings, node_state, interfaces=Switch()).check().state == READY
    other_process = VpnGuard(settings, node_state, interfaces=Switch(up=False))
    assert other_process.check().state == DEGRADED
    assert node_state.vpn_state() == DEGRADED
    assert other_process.check().state == DEGRADED


def test_a_state_nobody_refreshes_expires_to_booting(
    make_settings: Callable[..., Settings],
    probe_server: Any,
    node_state: NodeState,
    wait_until: Callable[..., Any],
) -> None:
    # (a TTL a stalled second cannot outlast between the write and the read that proves it was written)
    ttl_sec = 3.0
    guard = VpnGuard(
        make_settings(vpn_probe_targets=[probe_server.url]), node_state, ttl_sec=ttl_sec, interfaces=Switch()
    )
    assert guard.check().state == READY
    assert node_state.vpn_state() == READY
    wait_until(lambda: node_state.vpn_state() == BOOTING, timeout=ttl_sec + 10)


def test_state_ttl_is_three_intervals_and_at_least_ten_seconds(
    make_settings: Callable[..., Settings],
) -> None:
    assert state_ttl_sec(make_settings(vpn_check_interval_sec=1)) == 10
    assert state_ttl_sec(make_settings(vpn_check_interval_sec=10)) == 30
    assert VpnGuard(make_settings(vpn_check_interval_sec=20)).ttl_sec == 60


def test_checks_go_on_when_the_local_broker_is_down(
    make_settings: Callable[..., Settings], probe_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    no_retry = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=no_retry)
    guard = VpnGuard(
        make_settings(vpn_probe_targets=[probe_server.url]), NodeState(dead, "q"), interfaces=Switch()
    )
    caplog.set_level(logging.WARNING)
    assert guard.check().state == READY
    assert "VPN state could not be stored" in caplog.text


# -- preflight --


def test_preflight_passes_when_ready(make_settings: Callable[..., Settings], probe_server: Any) -> None:
    settings = make_settings(vpn_interface_hint="lo", vpn_probe_targets=[probe_server.url])
    assert preflight(settings).state == READY


def test_a_failed_preflight_stops_the_start(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(vpn_interface_hint=MISSING_INTERFACE)
    with pytest.raises(
        VPNError, match=f"VPN preflight failed: interface {MISSING_INTERFACE} is missing or down"
    ):
        preflight(settings)


def test_a_failed_preflight_only_warns_when_degraded_startup_is_allowed(
    make_settings: Callable[..., Settings], node_state: NodeState, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(vpn_interface_hint=MISSING_INTERFACE, allow_degraded_startup=True)
    caplog.set_level(logging.WARNING)
    check = preflight(settings, node_state)
    assert check.state == VPN_UNAVAILABLE
    assert node_state.vpn_state() == VPN_UNAVAILABLE
    assert "starting anyway because CODA_ALLOW_DEGRADED_STARTUP is true" in caplog.text
