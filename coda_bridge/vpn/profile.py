"""Allow-list check of the OpenVPN client profile the cloud hands out (PROTOCOL.md section 6).

The profile is run by a root ``openvpn`` daemon, and far more than the
twelve directives that run commands are dangerous there: ``config`` and
``setenv opt`` make OpenVPN read directives no check sees, ``log`` or
``writepid`` make root truncate a file of the profile's choosing,
``management`` opens a control socket, ``auth-user-pass`` or a path after
``ca`` makes root read a file, ``verb 7`` logs key material.  So instead of
refusing known-bad directives this accepts only what a client profile of
the cloud needs (the shape of an AWS Client VPN export: ``<ca>``,
``<cert>``, ``<key>``, optional ``<tls-auth>``/``<tls-crypt>`` blocks,
``remote``, ``cipher``, ``verb`` and the like), each with a strict grammar
for its arguments, and refuses every other line by its number, inside
``<connection>`` blocks too.

The profile is then written back in a canonical form built from the
checked tokens (comments, quoting quirks and blank lines dropped), so the
text OpenVPN reads is ours, never the cloud's bytes.  Lines are read the
way OpenVPN 2.6 reads them: split on ``\\n``, at most :data:`MAX_LINE_BYTES`
each (OpenVPN splits a longer line, and a split-off tail starting with
``</ca>`` would end a block early), tokens split on C blanks with ``"``/``'``
quoting and backslash escapes, ``#``/``;`` starting a comment, a leading
``--`` dropped, names case-sensitive.  Where OpenVPN is lenient this is
strict: ASCII only, no NUL or control character but TAB, a block tag alone
on its line, no block body line starting with ``<``.  Error messages name a
line number and, from a fixed vocabulary only, a directive; never other
profile text, which may be key material.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..errors import VPNError

__all__ = [
    "ALLOWED_DIRECTIVES",
    "CONNECTION_DIRECTIVES",
    "INLINE_BLOCKS",
    "REFUSED_DIRECTIVES",
    "MAX_LINE_BYTES",
    "MAX_VERB_LEVEL",
    "RENEG_SEC_LINE",
    "check_profile",
    "directive_tokens",
]

#: Appended when the profile sets no renegotiation period: the server alone decides when to rekey.
RENEG_SEC_LINE = "reneg-sec 0"
#: OpenVPN reads config lines into a 256-byte buffer; a longer line is split and its tail read as a new line.
MAX_LINE_BYTES = 254
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

#: What C's ``isspace`` accepts: OpenVPN's token separators.
_C_SPACE = frozenset(" \t\n\v\f\r")
#: What a backslash may stand before, outside single quotes.
_ESCAPABLE = frozenset('\\"') | _C_SPACE
_BOM = "\ufeff"


class _ParseError(ValueError):
    """A line OpenVPN itself would refuse to tokenize."""


class _BadArguments(ValueError):
    """A directive's arguments are outside its grammar; the message says what the grammar is."""


def directive_tokens(line: str) -> list[str]:
    """Split one config line into OpenVPN's parameters (quotes, backslash escapes, comments)."""
    tokens: list[str] = []
    current: list[str] = []
    state = "space"  # space | bare | dquote | squote
    escaped = False
    for char in line + "\0":  # OpenVPN's loop also reads the terminating NUL, as a blank
        if not escaped and char == "\\" and state != "squote":
            escaped = True
            continue
        blank = char == "\0" or char in _C_SPACE
        out: str | None = None
        done = False
        if state == "space":
            if not blank:
                if char in "#;":
                    break  # a comment, escaped or not
                if not escaped and char == '"':
                    state = "dquote"
                elif not escaped and char == "'":
                    state = "squote"
                else:
                    out, state = char, "bare"
        elif state == "bare":
            if not escaped and blank:
                done = True
            else:
                out = char
        elif state == "dquote":
            if not escaped and char == '"':
                done = True
            else:
                out = char
        elif char == "'":
            done = True
        else:
            out = char
        if done:
            tokens.append("".join(current))
            current, state = [], "space"
        if out == "\0":
            out = None
        if escaped and out is not None and out not in _ESCAPABLE:
            raise _ParseError("a backslash may only escape a backslash, a double quote or a blank")
        escaped = False
        if out is not None:
            current.append(out)
    if state != "space":
        raise _ParseError("a quotation or an escape is not closed")
    return tokens


# -- argument grammars: each takes the arguments and returns them in canonical form --

Grammar = Callable[[list[str]], list[str]]

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
        raise _BadArguments(f"takes {least} argument{'' if least == 1 else 's'}")
    raise _BadArguments(f"takes {least} to {most} arguments")


def _number(text: str, least: int, most: int) -> str:
    if not _DECIMAL.fullmatch(text) or not least <= int(text) <= most:
        raise _BadArguments(f"needs a decimal number from {least} to {most}")
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
            raise _BadArguments("has an argument outside the allowed values")
        return [found]

    return grammar


def _numbers(least_args: int, most_args: int, least: int, most: int) -> Grammar:
    def grammar(args: list[str]) -> list[str]:
        _count(args, least_args, most_args)
        return [_number(arg, least, most) for arg in args]

    return grammar


def _host(text: str) -> str:
    if "%" in text:  # ipaddress takes IPv6 zone ids ("fe80::1%eth0"), which name a host interface
        raise _BadArguments("needs a DNS name or an IP address without a zone")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(text) and not re.fullmatch(r"[0-9.]+", text):
        return text
    raise _BadArguments("needs a DNS name or an IP address")


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
        raise _BadArguments(f"needs an interface name of at most {limit} letters, digits, - or _")
    return args


def _resolv_retry(args: list[str]) -> list[str]:
    _count(args, 1, 1)
    return args if args[0] == "infinite" else [_number(args[0], 0, MAX_TIMER_SEC)]


def _verify_x509_name(args: list[str]) -> list[str]:
    _count(args, 1, 2)
    if not _X509_NAME.fullmatch(args[0]) or args[0].strip() != args[0]:
        raise _BadArguments("has a name with characters outside letters, digits, blanks and ._,=@*+:/()-")
    return args[:1] + (_choice("subject", "name", "name-prefix")(args[1:]) if len(args) == 2 else [])


def _cipher_list(args: list[str]) -> list[str]:
    _count(args, 1, 1)
    names = args[0].split(":")
    return [":".join(_choice(*_DATA_CIPHERS, any_case=True)([name])[0] for name in names)]


def _tls_string(args: list[str]) -> list[str]:
    _count(args, 1, 1)
    if not _TLS_CIPHER_STRING.fullmatch(args[0]):
        raise _BadArguments("has characters outside an OpenSSL cipher list's letters, digits and _+:!@=.-")
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
_CONNECTION = "connection"

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
#: Inline-block directives given a path instead: root would read that file.
_PATH_FORM = "is allowed only as an inline <{tag}> block: a path would make root read that file"
_TAG = re.compile(r"<([a-z0-9-]{1,40})>")
_CLOSING_TAG = re.compile(r"</([a-z0-9-]{1,40})>")


def _known(name: str) -> bool:
    """Whether ``name`` is an OpenVPN option, so an error may echo it without echoing profile text."""
    vocabularies: tuple[Mapping[str, object], ...] = (ALLOWED_DIRECTIVES, REFUSED_DIRECTIVES, INLINE_BLOCKS)
    return name == _CONNECTION or any(name in vocabulary for vocabulary in vocabularies)


def _error(number: int, reason: str, name: str | None = None) -> VPNError:
    where = f"VPN profile line {number}"
    if name is not None and _known(name):
        return VPNError(f"{where}: directive '{name}' {reason}")
    return VPNError(f"{where}: {reason}")


def _refusal(number: int, name: str, where: str = "") -> VPNError:
    """The error for a directive outside the allow-list; unknown names are not echoed."""
    if name == _CONNECTION:
        return _error(number, "is allowed only as a <connection> block", name)
    if name in INLINE_BLOCKS:
        return _error(number, _PATH_FORM.format(tag=name), name)
    if name in ALLOWED_DIRECTIVES:
        return _error(number, f"is not allowed{where}", name)
    if name in REFUSED_DIRECTIVES:
        return _error(number, f"is not allowed: it {REFUSED_DIRECTIVES[name]}", name)
    lower = name.lower()
    if lower in ALLOWED_DIRECTIVES:  # OpenVPN's names are case-sensitive: it would refuse this too
        return _error(number, "must be written in lower case", lower)
    if lower in REFUSED_DIRECTIVES:
        return _error(number, f"is not allowed, in any case: it {REFUSED_DIRECTIVES[lower]}", lower)
    return _error(number, "is not a directive a client profile may carry (its text is not shown)")


def _clean_lines(text: str) -> list[str]:
    """The profile's lines without BOM and CRs; refuses characters and lengths OpenVPN could misread."""
    text = text.removeprefix(_BOM)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    cleaned = []
    for number, raw in enumerate(lines, start=1):
        line = raw.removesuffix("\r")
        for char in line:
            if char == "\0":
                raise _error(number, "contains a NUL character")
            if ord(char) > 0x7F:
                raise _error(number, "contains a non-ASCII character")
            if (ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F:
                raise _error(number, "contains a control character")
        if len(line) > MAX_LINE_BYTES:
            raise _error(number, f"is longer than {MAX_LINE_BYTES} bytes, which OpenVPN would split")
        cleaned.append(line)
    return cleaned


def _quoted(argument: str) -> str:
    """An argument as OpenVPN reads it back: grammars let only blanks need quoting."""
    if not argument or argument[0] in "#;" or any(char in _C_SPACE for char in argument):
        return f'"{argument}"'
    return argument


class _Profile:
    """One pass over the lines, writing the canonical profile as it goes."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.out: list[str] = []
        self.index = 0
        self.has_reneg = False
        self.dev_line = 0  # line of a ``dev`` naming a device that is not tun by its name
        self.has_dev_type = False

    def run(self) -> str:
        self.directives(inside_connection=False, opened=0)
        if self.dev_line and not self.has_dev_type:
            reason = "names a device other than 'tun' or 'tunN' and the profile has no 'dev-type tun'"
            raise _error(self.dev_line, reason, "dev")
        if not self.has_reneg:
            self.out.append(RENEG_SEC_LINE)
        return "\n".join(self.out) + "\n"

    def emit(self, number: int, line: str) -> None:
        if len(line) > MAX_LINE_BYTES:
            raise _error(number, f"is longer than {MAX_LINE_BYTES} bytes once written canonically")
        self.out.append(line)

    def directives(self, *, inside_connection: bool, opened: int) -> None:
        """Check directive lines up to the end, or up to ``</connection>`` when inside one."""
        where = " inside <connection>" if inside_connection else ""
        while self.index < len(self.lines):
            number, line = self.index + 1, self.lines[self.index]
            self.index += 1
            stripped = line.strip(" \t")
            closing = _CLOSING_TAG.fullmatch(stripped)
            if closing:
                if inside_connection and closing.group(1) == _CONNECTION:
                    return
                raise _error(number, "closes a block that is not open")
            opening = _TAG.fullmatch(stripped)
            if opening:
                self.block(number, opening.group(1), inside_connection)
                continue
            if stripped.startswith("<"):
                raise _error(number, "has a block tag that is not alone on its line in lower case")
            try:
                tokens = directive_tokens(line)
            except _ParseError as exc:
                raise _error(number, f"cannot be parsed: {exc}") from None
            if not tokens:
                continue
            name = tokens[0][2:] if len(tokens[0]) >= 3 and tokens[0].startswith("--") else tokens[0]
            if name.startswith("<"):
                raise _error(number, "has a block tag that is not alone on its line")
            rule = ALLOWED_DIRECTIVES.get(name)
            if rule is None or (inside_connection and not rule.in_connection):
                raise _refusal(number, name, where)
            try:
                arguments = rule.grammar(tokens[1:])
            except _BadArguments as exc:
                raise _error(number, f"{exc}{rule.note}", name) from None
            self.note(number, name, arguments, inside_connection)
            self.emit(number, " ".join([name, *map(_quoted, arguments)]))
        if inside_connection:
            raise _error(opened, "opens a <connection> block that is never closed")

    def note(self, number: int, name: str, arguments: list[str], inside_connection: bool) -> None:
        """Remember what the checks over the whole profile need."""
        if name == "reneg-sec" and not inside_connection:
            self.has_reneg = True
        elif name == "dev-type":
            self.has_dev_type = True
        elif name == "dev":
            self.dev_line = 0 if re.fullmatch(r"tun[0-9]*", arguments[0]) else number

    def block(self, number: int, tag: str, inside_connection: bool) -> None:
        if tag == _CONNECTION:
            if inside_connection:
                raise _error(number, "opens a <connection> block inside another one")
            self.out.append(f"<{tag}>")
            self.directives(inside_connection=True, opened=number)
            self.out.append(f"</{tag}>")
            return
        if tag not in INLINE_BLOCKS:
            name = tag if _known(tag) else None
            reason = f": it {REFUSED_DIRECTIVES[tag]}" if tag in REFUSED_DIRECTIVES else ""
            raise _error(number, f"is not allowed as an inline block{reason}", name)
        if inside_connection and not INLINE_BLOCKS[tag]:
            raise _error(number, "is not allowed as an inline block inside <connection>", tag)
        self.out.append(f"<{tag}>")
        while self.index < len(self.lines):
            body_number, body = self.index + 1, self.lines[self.index].strip(" \t")
            self.index += 1
            if body == f"</{tag}>":
                self.out.append(body)
                return
            if body.startswith("<"):  # OpenVPN ends a block at any line starting with its closing tag
                raise _error(body_number, f"starts with '<' inside the <{tag}> block")
            if body:
                self.out.append(body)
        raise _error(number, f"opens an inline <{tag}> block that is never closed")


def check_profile(text: str) -> str:
    """Check ``text`` against the allow-list; return the canonical profile to write, with a ``reneg-sec``.

    Raises :class:`VPNError` naming the first refused line.
    """
    if not text.strip():
        raise VPNError("VPN profile is empty")
    return _Profile(_clean_lines(text)).run()
