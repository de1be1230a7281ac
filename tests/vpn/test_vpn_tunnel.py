"""A real OpenVPN tunnel: brought up by the manager, seen as ready by the guard, its loss seen as degraded.

The server runs in a network namespace of its own, reached from the test's
namespace over a veth pair, and an HTTP server inside that namespace is the
probe target at the server's tunnel address.  A server in the same namespace
would not do: the kernel delivers traffic to one of its own addresses
locally, so the probe would pass without the tunnel.  The client keeps its
tun device across restarts (``persist-tun``), so after the server is gone the
probe's packets still go into the tunnel and nowhere else; nothing leaves
loopback or the namespace the test makes.  While the lab stands, an
``unreachable`` route for the whole 10.213.0.0/16 keeps a probe sent before
the tunnel's address exists from taking the default route off the host.

The second test takes the product's own path: the local cloud simulator
hands out the client profile in ``vpn`` mode and :func:`coda_bridge.pipeline.bridge.connect`
provisions, starts OpenVPN and runs the preflight; the probes app then
answers ``/ready`` with 200 and, once the server is gone, 503 ``degraded``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from coda_bridge.cloud.redis_keys import group_name, stream_key
from coda_bridge.devtools.devcloud import DevCloudClient
from coda_bridge.identity.connect import load_node_settings
from coda_bridge.identity.credentials import StatePaths
from coda_bridge.pipeline import bridge as node
from coda_bridge.settings import Settings, load_settings
from coda_bridge.state.node_state import NodeState
from coda_bridge.state.registry import Registration
from coda_bridge.vpn.guard import VpnGuard, tun_interfaces
from coda_bridge.vpn.openvpn import OpenVPNManager
from coda_bridge.vpn.states import DEGRADED, READY
from coda_bridge.web.probes_app import create_app

pytestmark = [pytest.mark.vpn, pytest.mark.e2e]

#: The tunnel's subnet; the server is .1 and hands the client .2.
TUNNEL_SERVER_IP = "10.213.0.1"
TUNNEL_CLIENT_IP = "10.213.0.2"
#: The veth link between the test's namespace and the server's: host side .1, namespace side .2.
LINK_HOST_CIDR = "10.213.9.1/30"
LINK_NS_IP = "10.213.9.2"
#: Everything the lab uses; unreachable from the test's namespace except through the lab's own links.
LAB_RANGE = "10.213.0.0/16"
OPENVPN_PORT = 1194
PROBE_PORT = 8080
#: How long the server and the probe server may take to start.
SERVICE_START_SEC = 10.0
#: Per probe, short so that losing the server is seen quickly.
PROBE_TIMEOUT_SEC = 2.0
#: How long the test's jobs worker stays ready without a refresh: beyond the test.
JOBS_WORKER_HELD_SEC = 300.0


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "needs Linux network namespaces"
    if os.geteuid() != 0:
        return "needs root (tun devices and network namespaces)"
    if not shutil.which("openvpn"):
        return "openvpn is not installed (apt-get install openvpn)"
    if not shutil.which("ip"):
        return "ip is not installed (apt-get install iproute2)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def _inline(tag: str, body: str) -> str:
    return f"<{tag}>\n{body.strip()}\n</{tag}>\n"


@dataclass
class TunnelLab:
    """A server namespace with OpenVPN and an HTTP probe server in it, and how to tear it all down."""

    directory: Path
    suffix: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return f"codavpn{self.suffix}"

    @property
    def veth_host(self) -> str:
        return f"cvh{self.suffix}"

    @property
    def veth_ns(self) -> str:
        return f"cvn{self.suffix}"

    @property
    def client_dev(self) -> str:
        return f"codatun{self.suffix}"

    @property
    def probe_url(self) -> str:
        return f"http://{TUNNEL_SERVER_IP}:{PROBE_PORT}/"

    def build_network(self) -> None:
        created = _ip("netns", "add", self.namespace, check=False)
        if created.returncode != 0:
            pytest.skip(f"cannot create a network namespace: {created.stderr.strip()}")
        _ip("link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
        _ip("link", "set", self.veth_ns, "netns", self.namespace)
        _ip("addr", "add", LINK_HOST_CIDR, "dev", self.veth_host)
        _ip("link", "set", self.veth_host, "up")
        _ip("-n", self.namespace, "addr", "add", f"{LINK_NS_IP}/30", "dev", self.veth_ns)
        _ip("-n", self.namespace, "link", "set", self.veth_ns, "up")
        _ip("-n", self.namespace, "link", "set", "lo", "up")
        _ip("route", "add", "unreachable", LAB_RANGE)

    def _in_namespace(self, name: str, args: list[str], log: Path) -> None:
        with log.open("wb") as output:
            self.processes[name] = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def start_server(self, server_conf: str) -> None:
        conf = self.directory / "server.conf"
        conf.write_text(server_conf)
        conf.chmod(0o600)
        log = self.directory / "server.log"
        self._in_namespace("openvpn-server", ["openvpn", "--config", str(conf)], log)
        deadline = time.monotonic() + SERVICE_START_SEC
        while "Initialization Sequence Completed" not in log.read_text(errors="replace"):
            if self.processes["openvpn-server"].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"OpenVPN server did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)

    def start_probe_server(self) -> None:
        www = self.directory / "www"
        www.mkdir()
        args = [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "0.0.0.0",
            "--directory",
            str(www),
            str(PROBE_PORT),
        ]
        self._in_namespace("http", args, self.directory / "http.log")
        deadline = time.monotonic() + SERVICE_START_SEC
        while True:  # asked over the veth link, not through the tunnel
            try:
                socket.create_connection((LINK_NS_IP, PROBE_PORT), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("the probe HTTP server did not start") from None
                time.sleep(0.1)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def teardown(self) -> None:
        for name in list(self.processes):
            with contextlib.suppress(Exception):
                self.stop(name)
        _ip("netns", "del", self.namespace, check=False)
        _ip("route", "del", "unreachable", LAB_RANGE, check=False)
        for device in (self.veth_host, self.client_dev):
            if _ip("link", "show", "dev", device, check=False).returncode == 0:
                _ip("link", "del", device, check=False)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[TunnelLab]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    in_use = _ip("-o", "addr", "show").stdout + _ip("-o", "route", "show").stdout
    if "10.213." in in_use:
        pytest.skip("10.213.0.0/16 is already in use on this host")
    lab = TunnelLab(tmp_path / "lab", f"{os.getpid() % 100000}")
    lab.directory.mkdir()
    try:
        lab.build_network()
        yield lab
    finally:
        lab.teardown()


def _server_conf(pki: Any) -> str:
    return (
        "dev tun\n"
        "topology subnet\n"
        "server 10.213.0.0 255.255.255.0\n"
        "proto udp\n"
        f"local {LINK_NS_IP}\n"
        f"port {OPENVPN_PORT}\n"
        "dh none\n"
        "keepalive 1 4\n"
        "explicit-exit-notify 1\n"
        "verb 3\n" + _inline("ca", pki.ca) + _inline("cert", pki.server_cert) + _inline("key", pki.server_key)
    )


def _client_profile(pki: Any, device: str) -> str:
    return (
        "client\n"
        f"dev {device}\n"
        "dev-type tun\n"
        "proto udp\n"
        f"remote {LINK_NS_IP} {OPENVPN_PORT}\n"
        "nobind\n"
        "route-nopull\n"
        "remote-cert-tls server\n"
        "persist-tun\n"
        "connect-retry 1\n"
        "verb 3\n" + _inline("ca", pki.ca) + _inline("cert", pki.client_cert) + _inline("key", pki.client_key)
    )


def test_real_tunnel_comes_up_is_ready_and_its_loss_is_degraded(
    lab: TunnelLab,
    pki: Any,
    make_settings: Callable[..., Settings],
    redis_url: str,
    wait_until: Callable[..., Any],
) -> None:
    started_at = time.monotonic()
    lab.start_server(_server_conf(pki))
    lab.start_probe_server()
    settings = make_settings(
        vpn_required=True,
        vpn_interface_hint=lab.client_dev,
        vpn_probe_targets=[lab.probe_url],
        vpn_check_interval_sec=1,
    )
    manager = OpenVPNManager(start_timeout_sec=20, poll_interval_sec=0.2)
    client = redis.Redis.from_url(redis_url)
    node_state = NodeState(client, "qpu-tunnel")
    try:
        assert manager.bring_up(settings, _client_profile(pki, lab.client_dev)) is True
        # The link comes up a moment before its address; probe only once the route into the tunnel exists.
        wait_until(
            lambda: f"inet {TUNNEL_CLIENT_IP}/" in _ip("-o", "addr", "show", "dev", lab.client_dev).stdout
        )
        assert lab.client_dev in tun_interfaces()
        status = manager.status(settings)
        assert status["running"] and status["interface"] == lab.client_dev
        assert manager.bring_up(settings, _client_profile(pki, lab.client_dev)) is False  # already up

        guard = VpnGuard(settings, node_state, probe_timeout_sec=PROBE_TIMEOUT_SEC)
        ready = wait_until(lambda: (check := guard.check()).ready and check, timeout=10)
        assert ready.state == READY
        assert node_state.vpn_state() == READY

        lab.stop("openvpn-server")
        lost = wait_until(lambda: (check := guard.check()).state == DEGRADED and check, timeout=15)
        assert "did not answer" in lost.detail or "missing or down" in lost.detail
        assert node_state.vpn_state() == DEGRADED
    finally:
        manager.stop(settings)
        client.close()
    wait_until(lambda: not tun_interfaces(lab.client_dev), timeout=5)
    assert not manager.status(settings)["running"]
    assert time.monotonic() - started_at < 40


#: A JSON Web Token anywhere in a text (header and payload are base64url JSON objects).
_JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.")


def _assert_no_secret(text: str, *secrets: str) -> None:
    assert "PRIVATE KEY" not in text
    assert not _JWT.search(text)
    for secret in secrets:
        assert secret.strip() not in text


def test_cloud_profile_brings_the_node_up_ready_and_its_loss_makes_ready_503(
    lab: TunnelLab,
    pki: Any,
    clean_env: pytest.MonkeyPatch,
    devcloud: DevCloudClient,
    redis_url: str,
    tmp_path: Path,
    wait_until: Callable[..., Any],
) -> None:
    started_at = time.monotonic()
    lab.start_server(_server_conf(pki))
    lab.start_probe_server()
    qpu_id = f"qpu-vpn-{lab.suffix}"
    devcloud.create_qpu(
        qpu_id,
        connection_mode="vpn",
        client_profile_ovpn=_client_profile(pki, lab.client_dev),
        vpn={"interface_hint": None, "check_interval_sec": 1, "probe_targets": [lab.probe_url]},
        redis_url=redis_url,
        replace=True,
    )
    token = devcloud.mint_token(qpu_id)
    clean_env.setenv("CODA_WEBAPP_URL", devcloud.base_url)
    clean_env.setenv("CODA_BROKER_URL", redis_url)
    clean_env.setattr("coda_bridge.identity.connect.legacy_dir", lambda: tmp_path / "no-legacy")
    before = load_settings()  # the state directory, for stopping OpenVPN however far connect got
    client = redis.Redis.from_url(redis_url)
    jobs_worker = Registration(client, qpu_id, "jobs", ttl_sec=JOBS_WORKER_HELD_SEC)
    settings: Settings | None = None
    try:
        # provisions, starts OpenVPN, passes the preflight
        settings = node.connect(load_node_settings(), token=token)

        assert settings.qpu_id == qpu_id and settings.vpn_required
        assert settings.vpn_interface_hint is None and settings.vpn_probe_targets == [lab.probe_url]
        profile = StatePaths(settings.state_dir).vpn_profile
        assert settings.node_vpn_profile_path == str(profile)
        assert profile.stat().st_mode & 0o777 == 0o600
        assert f"dev {lab.client_dev}" in profile.read_text()
        assert lab.client_dev in tun_interfaces()
        assert OpenVPNManager().status(settings)["running"]

        node_state = NodeState(client, qpu_id)
        guard = VpnGuard(settings, node_state, probe_timeout_sec=PROBE_TIMEOUT_SEC)
        assert guard.check().state == READY
        assert node_state.vpn_state() == READY
        # what the bridge does once connected: its group on the job stream, then a completed read
        try:
            client.xgroup_create(stream_key(qpu_id), group_name(qpu_id), id="0", mkstream=True)
        except redis.ResponseError as exc:
            assert "BUSYGROUP" in str(exc)  # the group is there already
        node_state.stream_read()
        jobs_worker.executor_built()  # and what a jobs worker does once its executor is built
        probes = create_app(settings).test_client()
        secrets = (token, pki.client_key, settings.jwt_private_key_value or "")

        ready = probes.get("/ready")
        assert ready.status_code == 200, ready.get_json()
        assert ready.get_json()["ready"] is True and ready.get_json()["vpn_state"] == READY
        _assert_no_secret(ready.get_data(as_text=True), *secrets)

        lab.stop("openvpn-server")
        lost = wait_until(lambda: (check := guard.check()).state == DEGRADED and check, timeout=15)
        assert "did not answer" in lost.detail or "missing or down" in lost.detail
        assert node_state.vpn_state() == DEGRADED

        degraded = probes.get("/ready")
        assert degraded.status_code == 503, degraded.get_json()
        body = degraded.get_json()
        assert body["ready"] is False and body["vpn_state"] == DEGRADED
        assert body["reason"] == f"VPN state is {DEGRADED}"
        _assert_no_secret(degraded.get_data(as_text=True), *secrets)
    finally:
        OpenVPNManager().stop(settings or before)
        jobs_worker.stop()
        client.close()
        with contextlib.suppress(Exception):
            devcloud.delete_qpu(qpu_id)
    wait_until(lambda: not tun_interfaces(lab.client_dev), timeout=5)
    assert not OpenVPNManager().status(settings)["running"]
    assert time.monotonic() - started_at < 40


class _TunnelAtEachStep:
    """The real OpenVPN manager, noting whether the tunnel was up when each of its steps ended."""

    def __init__(self, device: str) -> None:
        self.manager = OpenVPNManager(start_timeout_sec=20, poll_interval_sec=0.2)
        self.device = device
        self.steps: list[tuple[str, float, bool]] = []

    def _note(self, step: str) -> None:
        self.steps.append((step, time.time(), bool(tun_interfaces(self.device))))

    def restore(self, settings: Settings) -> bool:
        started = self.manager.restore(settings)
        self._note("restore")
        return started

    def bring_up(self, settings: Settings, profile: str) -> bool:
        started = self.manager.bring_up(settings, profile)
        self._note("bring_up")
        return started

    def stop(self, settings: Settings) -> None:
        self.manager.stop(settings)
        self._note("stop")

    def ensure_running(self, settings: Settings) -> bool:
        return self.manager.ensure_running(settings)


def test_a_reconnect_brings_the_saved_tunnel_up_before_its_request(
    lab: TunnelLab,
    pki: Any,
    clean_env: pytest.MonkeyPatch,
    devcloud: DevCloudClient,
    redis_url: str,
    tmp_path: Path,
    wait_until: Callable[..., Any],
) -> None:
    # given a node provisioned in vpn mode whose OpenVPN is then stopped (a reboot, say)
    lab.start_server(_server_conf(pki))
    lab.start_probe_server()
    qpu_id = f"qpu-vpn-re-{lab.suffix}"
    devcloud.create_qpu(
        qpu_id,
        connection_mode="vpn",
        client_profile_ovpn=_client_profile(pki, lab.client_dev),
        vpn={"interface_hint": None, "check_interval_sec": 1, "probe_targets": [lab.probe_url]},
        redis_url=redis_url,
        replace=True,
    )
    clean_env.setenv("CODA_WEBAPP_URL", devcloud.base_url)
    clean_env.setenv("CODA_BROKER_URL", redis_url)
    clean_env.setattr("coda_bridge.identity.connect.legacy_dir", lambda: tmp_path / "no-legacy")
    before = load_settings()
    vpn = _TunnelAtEachStep(lab.client_dev)
    try:
        provisioned = node.connect(load_node_settings(), token=devcloud.mint_token(qpu_id))
        vpn.manager.stop(provisioned)
        wait_until(lambda: not tun_interfaces(lab.client_dev), timeout=5)

        # when the node starts again, without a token
        reconnected = node.connect(load_node_settings(), vpn=vpn)

        # then the saved tunnel came up first, and the reconnect request reached the cloud after it
        (reconnect,) = devcloud.connects(qpu_id, mode="reconnect")
        assert reconnect["accepted"] is True
        assert [(step, up) for step, _, up in vpn.steps] == [("restore", True), ("bring_up", True)]
        restored_at = vpn.steps[0][1]
        assert reconnect["received_at"] >= restored_at
        assert reconnected.qpu_id == qpu_id and lab.client_dev in tun_interfaces()
    finally:
        vpn.manager.stop(before)
        with contextlib.suppress(Exception):
            devcloud.delete_qpu(qpu_id)
    wait_until(lambda: not tun_interfaces(lab.client_dev), timeout=5)
