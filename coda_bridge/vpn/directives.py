"""The allow-list of OpenVPN directives a cloud client profile may carry, and why every other is refused.

Each allowed directive has a strict grammar for its arguments (a callable
that returns them, cleaned, or raises :class:`BadArguments`); every other
option of OpenVPN 2.6 is filed under the reason it is refused, so an error
may name it without echoing any other profile text.  The reader that
applies these tables is :mod:`~coda_bridge.vpn.profile`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "ALLOWED_DIRECTIVES",
    "CONNECTION_BLOCK",
    "CONNECTION_DIRECTIVES",
    "INLINE_BLOCKS",
    "MAX_VERB_LEVEL",
    "REFUSED_DIRECTIVES",
    "BadArguments",
    "Directive",
    "Grammar",
]

#: A directive's argument grammar: the arguments, cleaned, or :class:`BadArguments`.
Grammar = Callable[[list[str]], list[str]]

#: Highest ``verb`` level allowed: from level 7 up OpenVPN logs data-channel key material.
MAX_VERB_LEVEL = 6
#: Longest interface name Linux takes for ``dev`` (IFNAMSIZ less its terminating NUL), in bytes.
MAX_DEVICE_NAME_BYTES = 15
#: Longest timer (``reneg-sec``, ``keepalive``, ``connect-retry`` ...) accepted, in seconds: one week.
MAX_TIMER_SEC = 7 * 24 * 3600
#: Largest repeat count (``mute``, ``connect-retry-max``) accepted.
MAX_REPEAT_COUNT = 1_000_000
#: Smallest and largest ``tun-mtu``/``mssfix`` accepted, in bytes (576 is IPv4's minimum datagram).
MIN_MTU_BYTES, MAX_MTU_BYTES = 576, 65535
#: Highest TCP or UDP port number, for ``remote``, ``port`` and ``rport``.
MAX_PORT_NUMBER = 65535
#: Largest ``explicit-exit-notify`` retry count OpenVPN documents, in datagrams.
MAX_EXIT_NOTIFY_DATAGRAMS = 10


class BadArguments(ValueError):
    """A directive's arguments are outside its grammar; the message says what the grammar is."""


_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=[^ ]{{1,253}}$){_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,9}")
_DEVICE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_DEVICE_NAME_BYTES - 1}}}")
_X509_NAME = re.compile(r"[A-Za-z0-9 ._,=@*+:/()-]{1,200}")
_TLS_CIPHER_STRING = re.compile(r"[A-Za-z0-9_+:!@=.-]{1,200}")
_CLIENT_PROTOCOLS = ("udp", "udp4", "udp6", "tcp", "tcp4", "tcp6", "tcp-client", "tcp4-client", "tcp6-client")
_DATA_CIPHERS = (
    "AES-128-GCM",
    "AES-192-GCM",
    "AES-256-GCM",
    "CHACHA20-POLY1305",
    "AES-128-CBC",
    "AES-192-CBC",
    "AES-256-CBC",
)
_DIGESTS = ("SHA1", "SHA224", "SHA256", "SHA384", "SHA512")


def _count(args: list[str], least: int, most: int) -> None:
    if least <= len(args) <= most:
        return
    if least == most:
        raise BadArguments(f"takes {least} argument{'' if least == 1 else 's'}")
    raise BadArguments(f"takes {least} to {most} arguments")


def _number(text: str, least: int, most: int) -> str:
    if not _DECIMAL.fullmatch(text) or not least <= int(text) <= most:
        raise BadArguments(f"needs a decimal number from {least} to {most}")
    return text


def _flag(args: list[str]) -> list[str]:
    _count(args, 0, 0)
    return []


def _choice(*choices: str, any_case: bool = False) -> Grammar:
    """One argument out of ``choices``; with ``any_case`` it is matched without case and written as listed."""
    canonical = {(choice.upper() if any_case else choice): choice for choice in choices}

    def grammar(args: list[str]) -> list[str]:
        _count(args, 1, 1)
        found = canonical.get(args[0].upper() if any_case else args[0])
        if found is None:
            raise BadArguments("has an argument outside the allowed values")
        return [found]

    return grammar


def _numbers(least_args: int, most_args: int, least: int, most: int) -> Grammar:
    def grammar(args: list[str]) -> list[str]:
        _count(args, least_args, most_args)
        return [_number(arg, least, most) for arg in args]

    return grammar


def _host(text: str) -> str:
    if "%" in text:  # ipaddress takes IPv6 zone ids ("fe80::1%eth0"), which name a host interface
        raise BadArguments("needs a DNS name or an IP address without a zone")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(text) and not re.fullmatch(r"[0-9.]+", text):
        return text
    raise BadArguments("needs a DNS name or an IP address")


def _remote(args: list[str]) -> list[str]:
    """``remote HOST [PORT [PROTO]]``, the port in decimal (OpenVPN would also take a service name)."""
    _count(args, 1, 3)
    canonical = [_host(args[0])]
    if len(args) > 1:
        canonical.append(_number(args[1], 1, MAX_PORT_NUMBER))
    if len(args) > 2:
        canonical += _choice(*_CLIENT_PROTOCOLS)(args[2:])
    return canonical


def _device(args: list[str]) -> list[str]:
    _count(args, 1, 1)
    if not _DEVICE.fullmatch(args[0]):
        limit = MAX_DEVICE_NAME_BYTES
        raise BadArguments(f"needs an interface name of at most {limit} letters, digits, - or _")
    return args


def _resolv_retry(args: list[str]) -> list[str]:
    _count(args, 1, 1)
    return args if args[0] == "infinite" else [_number(args[0], 0, MAX_TIMER_SEC)]


def _verify_x509_name(args: list[str]) -> list[str]:
    _count(args, 1, 2)
    if not _X509_NAME.fullmatch(args[0]) or args[0].strip() != args[0]:
        raise BadArguments("has a name with characters outside letters, digits, blanks and ._,=@*+:/()-")
    return args[:1] + (_choice("subject", "name", "name-prefix")(args[1:]) if len(args) == 2 else [])


def _cipher_list(args: list[str]) -> list[str]:
    _count(args, 1, 1)
    names = args[0].split(":")
    return [":".join(_choice(*_DATA_CIPHERS, any_case=True)([name])[0] for name in names)]


def _tls_string(args: list[str]) -> list[str]:
    _count(args, 1, 1)
    if not _TLS_CIPHER_STRING.fullmatch(args[0]):
        raise BadArguments("has characters outside an OpenSSL cipher list's letters, digits and _+:!@=.-")
    return args


def _tls_version_min(args: list[str]) -> list[str]:
    _count(args, 1, 2)
    return _choice("1.2", "1.3")(args[:1]) + (_choice("or-highest")(args[1:]) if len(args) == 2 else [])


def _mssfix(args: list[str]) -> list[str]:
    _count(args, 0, 2)
    canonical = [_number(arg, MIN_MTU_BYTES, MAX_MTU_BYTES) for arg in args[:1]]
    return canonical + (_choice("mtu", "fixed")(args[1:]) if len(args) == 2 else [])


@dataclass(frozen=True)
class Directive:
    """How one allowed directive's arguments must look, and whether ``<connection>`` may hold it."""

    grammar: Grammar
    in_connection: bool = False
    note: str = ""  # what an argument error adds, e.g. why the limit is there


_SECONDS = _numbers(1, 1, 1, MAX_TIMER_SEC)
_PORT = _numbers(1, 1, 1, MAX_PORT_NUMBER)

#: Directives a client profile may carry, each with its argument grammar (names are case-sensitive).
ALLOWED_DIRECTIVES: Mapping[str, Directive] = MappingProxyType(
    {
        "client": Directive(_flag),
        "tls-client": Directive(_flag),
        "pull": Directive(_flag),
        "dev": Directive(_device),
        "dev-type": Directive(_choice("tun")),
        "proto": Directive(_choice(*_CLIENT_PROTOCOLS), in_connection=True),
        "remote": Directive(_remote, in_connection=True),
        "port": Directive(_PORT, in_connection=True),
        "rport": Directive(_PORT, in_connection=True),
        "remote-random": Directive(_flag),
        "remote-random-hostname": Directive(_flag),
        "resolv-retry": Directive(_resolv_retry),
        "nobind": Directive(_flag, in_connection=True),
        "persist-key": Directive(_flag),
        "persist-tun": Directive(_flag),
        "route-nopull": Directive(_flag),
        "remote-cert-tls": Directive(_choice("server")),
        "verify-x509-name": Directive(_verify_x509_name),
        "cipher": Directive(_choice(*_DATA_CIPHERS, any_case=True)),
        "data-ciphers": Directive(_cipher_list),
        "ncp-ciphers": Directive(_cipher_list),
        "data-ciphers-fallback": Directive(_choice(*_DATA_CIPHERS, any_case=True)),
        "auth": Directive(_choice(*_DIGESTS, any_case=True)),
        "tls-version-min": Directive(_tls_version_min),
        "tls-cipher": Directive(_tls_string),
        "tls-ciphersuites": Directive(_tls_string),
        "tls-cert-profile": Directive(_choice("preferred", "suiteb")),
        "key-direction": Directive(_choice("0", "1"), in_connection=True),
        "auth-nocache": Directive(_flag),
        "verb": Directive(
            _numbers(1, 1, 0, MAX_VERB_LEVEL), note=f" (levels above {MAX_VERB_LEVEL} log key material)"
        ),
        "mute": Directive(_numbers(1, 1, 0, MAX_REPEAT_COUNT)),
        "mute-replay-warnings": Directive(_flag),
        "reneg-sec": Directive(_numbers(1, 2, 0, MAX_TIMER_SEC)),
        "hand-window": Directive(_SECONDS),
        "tls-timeout": Directive(_SECONDS),
        "connect-retry": Directive(_numbers(1, 2, 0, MAX_TIMER_SEC), in_connection=True),
        "connect-retry-max": Directive(_numbers(1, 1, 1, MAX_REPEAT_COUNT), in_connection=True),
        "connect-timeout": Directive(_SECONDS, in_connection=True),
        "server-poll-timeout": Directive(_SECONDS),
        "keepalive": Directive(_numbers(2, 2, 1, MAX_TIMER_SEC)),
        "ping": Directive(_SECONDS),
        "ping-restart": Directive(_numbers(1, 1, 0, MAX_TIMER_SEC)),
        "explicit-exit-notify": Directive(_numbers(0, 1, 0, MAX_EXIT_NOTIFY_DATAGRAMS), in_connection=True),
        "tun-mtu": Directive(_numbers(1, 1, MIN_MTU_BYTES, MAX_MTU_BYTES), in_connection=True),
        "mssfix": Directive(_mssfix, in_connection=True),
    }
)
#: The allowed directives OpenVPN also takes inside a ``<connection>`` block.
CONNECTION_DIRECTIVES = frozenset(name for name, rule in ALLOWED_DIRECTIVES.items() if rule.in_connection)
#: Inline blocks whose body is data (PEM or static-key text): tag -> whether ``<connection>`` may hold it.
INLINE_BLOCKS: Mapping[str, bool] = MappingProxyType(
    {
        "ca": False,
        "cert": False,
        "key": False,
        "extra-certs": False,
        "tls-auth": True,
        "tls-crypt": True,
        "tls-crypt-v2": True,
    }
)
#: The one block that holds directives rather than data.
CONNECTION_BLOCK = "connection"

# -- the refused vocabulary: every other OpenVPN 2.6 option, by what it would do as root --

_REFUSED_BY_CLASS: dict[str, str] = {
    "runs a program or loads code into the root daemon": """
        script-security up down down-pre up-restart route-up route-pre-down ipchange tls-verify
        auth-user-pass-verify client-connect client-disconnect client-crresponse learn-address
        tls-crypt-v2-verify plugin engine providers pkcs11-providers iproute
    """,
    "makes OpenVPN read directives this check never sees": """
        config setenv ignore-unknown-option
    """,
    "makes root read a file or directory named by a path": """
        pkcs12 secret askpass auth-user-pass http-proxy http-proxy-user-pass socks-proxy crl-verify capath
        dh auth-gen-token-secret client-config-dir
    """,
    "makes root create, truncate or write a file": """
        log log-append status writepid replay-persist ifconfig-pool-persist genkey tls-export-cert tmp-dir
        memstats
    """,
    "opens a management or listening socket": """
        management management-client management-client-auth management-client-group management-client-user
        management-external-cert management-external-key management-forget-disconnect management-hold
        management-log-cache management-query-passwords management-query-proxy management-query-remote
        management-signal management-up-down lport local bind port-share server server-bridge server-ipv6
        mode tls-server multihome
    """,
    "changes the host's routes, addresses or devices": """
        route route-ipv6 route-gateway route-ipv6-gateway route-metric route-method redirect-gateway
        redirect-private ifconfig ifconfig-ipv6 dhcp-option dns dev-node lladdr mark bind-dev mktun rmtun
        txqueuelen client-nat block-ipv6 allow-recursive-routing register-dns block-outside-dns ip-win32
    """,
    "changes the daemon's user, directory, priority or logging": """
        cd chroot daemon syslog user group setcon mlock nice errors-to-stderr machine-readable-output
    """,
    "weakens the tunnel's protection": """
        compress comp-lzo comp-noadapt allow-compression ns-cert-type tls-version-max no-replay
        auth-user-pass-optional client-cert-not-required verify-client-cert compat-mode float
        allow-pull-fqdn
    """,
    "is not needed by a client profile of the cloud": """
        allow-nonadmin auth-gen-token auth-retry auth-token auth-token-user bcast-buffers ccd-exclusive
        client-to-client compat-names connect-freq connect-freq-initial cryptoapicert
        dhcp-internal dhcp-pre-release dhcp-release dhcp-renew disable disable-dco disable-occ
        duplicate-cn ecdh-curve echo fast-io force-tls-key-material-export fragment gremlin hash-size help
        http-proxy-option http-proxy-override http-proxy-retry http-proxy-timeout ifconfig-ipv6-pool
        ifconfig-ipv6-push ifconfig-noexec ifconfig-nowarn ifconfig-pool ifconfig-push
        ifconfig-push-constraint inactive ip-remote-hint iroute iroute-ipv6 key-derivation
        keying-material-exporter link-mtu max-clients max-packet-size max-routes max-routes-per-client
        msg-channel mtu-disc mtu-dynamic mtu-test no-name-remapping opt-verify parameter passtos
        pause-exit peer-fingerprint peer-id persist-local-ip persist-remote-ip ping-exit ping-timer-rem
        pkcs11-cert-private pkcs11-id pkcs11-id-management pkcs11-pin-cache pkcs11-private-mode
        pkcs11-protected-authentication preresolve prng proto-force protocol-flags pull-filter push
        push-continuation push-peer-info push-remove push-reset rcvbuf rdns-internal remap-usr1
        remote-cert-eku remote-cert-ku reneg-bytes reneg-pkts replay-window route-delay route-noexec
        service session-timeout setenv-safe shaper show-adapters show-ciphers show-curves show-digests
        show-engines show-gateway show-groups show-net show-net-up show-pkcs11-ids show-tls
        show-valid-subnets single-session sndbuf socket-flags socks-proxy-retry stale-routes-check
        static-challenge status-version suppress-timestamps tap-sleep tcp-nodelay tcp-queue-limit
        test-crypto tls-exit tls-groups topology tran-window tun-ipv6 tun-mtu-extra tun-mtu-max udp-mtu
        up-delay use-prediction-resistance username-as-common-name verify-hash version vlan-accept
        vlan-pvid vlan-tagging win-sys windows-driver x509-track x509-username-field
    """,
}
#: Every other OpenVPN option, mapped to why a profile may not carry it; the only names an error may echo.
REFUSED_DIRECTIVES: Mapping[str, str] = MappingProxyType(
    {name: reason for reason, names in _REFUSED_BY_CLASS.items() for name in names.split()}
)
