"""Helpers for the VPN tests: a fake ``openvpn``, a loopback HTTP server, a throw-away PKI, settings."""

from __future__ import annotations

import datetime as dt
import http.server
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coda_bridge.settings import Settings, load_settings

#: How long the fake daemon lives at most, so a failed test leaves nothing running for long.
FAKE_DAEMON_LIFETIME_SEC = 120

_FAKE_OPENVPN = '''#!{python}
"""A stand-in for openvpn --daemon: writes its log, forks a daemon that writes the pidfile and sleeps."""
import os
import signal
import sys
import time

MODE = {mode!r}
args = sys.argv[1:]


def option(name):
    return args[args.index(name) + 1] if name in args else None


with open(option("--log"), "w") as log:
    for number in range(1, {log_lines} + 1):
        log.write(f"fake-openvpn log line {{number:02d}}\\n")
if MODE == "fail":
    print("fake-openvpn: Options error: simulated bad option", flush=True)
    sys.exit(1)
if os.fork():
    sys.exit(0)
os.setsid()
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
if MODE == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(option("--writepid"), "w") as pidfile:
    pidfile.write(f"{{os.getpid()}}\\n")
if MODE == "die":
    time.sleep(0.3)
    os._exit(3)
deadline = time.monotonic() + {lifetime}
while time.monotonic() < deadline:
    time.sleep(0.1)
'''


@pytest.fixture
def fake_openvpn(tmp_path: Path) -> Callable[..., str]:
    """Write an executable named ``openvpn`` that acts out ``mode`` (daemon, fail, stubborn, die)."""

    def make(mode: str = "daemon", log_lines: int = 30) -> str:
        directory = tmp_path / f"bin-{mode}"
        directory.mkdir(exist_ok=True)
        script = directory / "openvpn"
        script.write_text(
            _FAKE_OPENVPN.format(
                python=sys.executable, mode=mode, log_lines=log_lines, lifetime=FAKE_DAEMON_LIFETIME_SEC
            )
        )
        script.chmod(0o755)
        return str(script)

    return make


def proc_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@pytest.fixture
def alive() -> Callable[[int], bool]:
    return proc_alive


def _wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """Poll a predicate until it is true, failing after a deadline."""
    return _wait_until


@dataclass
class ProbeServer:
    """A loopback HTTP server that answers HEAD with ``status`` and records the paths and headers it got."""

    server: http.server.ThreadingHTTPServer
    status: int = 200
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def probe_server() -> Iterator[ProbeServer]:
    """An HTTP server on a free 127.0.0.1 port, in a thread, stopped after the test."""
    holder: dict[str, ProbeServer] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            probe = holder["probe"]
            probe.paths.append(self.path)
            probe.headers.append(dict(self.headers))
            self.send_response(probe.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    probe = holder["probe"] = ProbeServer(server)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="probe-server", daemon=True)
    thread.start()
    yield probe
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def make_settings(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Settings]:
    """Settings with a private state directory and the given overrides."""

    def make(**overrides: Any) -> Settings:
        overrides.setdefault("state_dir", str(tmp_path / "state"))
        return load_settings(overrides=overrides)

    return make


# -- a throw-away PKI for the real tunnel --


@dataclass(frozen=True)
class Pki:
    """PEM texts of a CA and of one server and one client certificate with their keys."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier | None,
) -> str:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if usage is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, True, False, False, False, False), critical=True
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    certificate = builder.sign(issuer_key, hashes.SHA256())
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def make_pki() -> Pki:
    """A fresh EC P-256 CA, server and client, valid for a day."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    return Pki(
        ca=_issue("coda-test-ca", ca_key, "coda-test-ca", ca_key, None),
        server_cert=_issue(
            "coda-test-server", server_key, "coda-test-ca", ca_key, ExtendedKeyUsageOID.SERVER_AUTH
        ),
        server_key=_key_pem(server_key),
        client_cert=_issue(
            "coda-test-client", client_key, "coda-test-ca", ca_key, ExtendedKeyUsageOID.CLIENT_AUTH
        ),
        client_key=_key_pem(client_key),
    )


@pytest.fixture
def pki() -> Pki:
    return make_pki()
