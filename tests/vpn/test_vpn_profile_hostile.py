"""Hostile VPN profiles, table by table: every class of root-dangerous line is refused by its line number.

Each table is one class of harm a line could do as root (run a program, read
directives no check sees, read or write a file by path, open a socket, change
the host, weaken the tunnel), or one way of smuggling a line past the reader
(quoting, case, control characters, over-long lines, block tags).  Every row
is checked after a valid AWS-style export, and the directive rows inside a
``<connection>`` block as well.
"""

from __future__ import annotations

import pytest

from coda_bridge.errors import VPNError
from coda_bridge.vpn.profile import MAX_LINE_BYTES, check_profile, directive_tokens

SECRET = "U0VDUkVUS0VZTUFURVJJQUw="
CA = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUeQ==\n-----END CERTIFICATE-----"
STATIC_KEY = "-----BEGIN OpenVPN Static key V1-----\n0123456789abcdef\n-----END OpenVPN Static key V1-----"
REMOTE = "remote cvpn-endpoint-0abc.prod.clientvpn.us-east-1.amazonaws.com 443\n"
EXPORT = (
    "client\ndev tun\nproto udp\n"
    + REMOTE
    + "remote-random-hostname\nresolv-retry infinite\nnobind\nremote-cert-tls server\ncipher AES-256-GCM\n"
    + "verb 3\n"
    + f"<ca>\n{CA}\n</ca>\n<cert>\n{CA}\n</cert>\n"
    + f"<key>\n-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n</key>\n"
    + "reneg-sec 0\n"
)
#: The first line number after the export.
NEXT = EXPORT.count("\n") + 1
#: The export without its remote, followed by an open connection block with its own remote.
CONNECTION_HEAD = EXPORT.replace(REMOTE, "") + "<connection>\nremote a.example.test 443\n"
#: The line number of the first line after CONNECTION_HEAD.
CONNECTION_NEXT = CONNECTION_HEAD.count("\n") + 1

RUNS = "it runs a program or loads code into the root daemon"
HIDDEN = "it makes OpenVPN read directives this check never sees"
READS = "it makes root read a file or directory named by a path"
INLINE_ONLY = "a path would make root read that file"
WRITES = "it makes root create, truncate or write a file"
SOCKET = "it opens a management or listening socket"
HOST = "it changes the host's routes, addresses or devices"
PROCESS = "it changes the daemon's user, directory, priority or logging"
WEAKENS = "it weakens the tunnel's protection"
UNNEEDED = "it is not needed by a client profile of the cloud"

#: Directive lines by the class of what they would do as root: (line, fragment of the refusal).
DIRECTIVE_CLASSES: dict[str, list[tuple[str, str]]] = {
    "run programs or load code": [
        ("script-security 2", RUNS),
        ("up /tmp/x.sh", RUNS),
        ("down /tmp/x.sh", RUNS),
        ("down-pre", RUNS),
        ("up-restart", RUNS),
        ("route-up /tmp/x.sh", RUNS),
        ("route-pre-down /tmp/x.sh", RUNS),
        ("ipchange /tmp/x.sh", RUNS),
        ("tls-verify /tmp/x.sh", RUNS),
        ("auth-user-pass-verify /tmp/x.sh via-env", RUNS),
        ("client-connect /tmp/x.sh", RUNS),
        ("learn-address /tmp/x.sh", RUNS),
        ("tls-crypt-v2-verify /tmp/x.sh", RUNS),
        ("plugin /tmp/evil.so", RUNS),
        ("engine dynamic", RUNS),
        ("providers legacy default", RUNS),
        ("pkcs11-providers /tmp/evil.so", RUNS),
        ("iproute /tmp/fake-ip", RUNS),
    ],
    "read directives no check sees": [
        ("config /etc/openvpn/other.conf", HIDDEN),
        ("config stdin", HIDDEN),
        ("setenv opt script-security 2", HIDDEN),
        ("setenv opt up /tmp/x.sh", HIDDEN),
        ("setenv opt log /etc/passwd", HIDDEN),
        ("setenv FOO bar", HIDDEN),
        ("ignore-unknown-option up", HIDDEN),
    ],
    "read a credential or other file by path": [
        ("auth-user-pass", READS),
        ("auth-user-pass /root/creds", READS),
        ("askpass /root/passphrase", READS),
        ("pkcs12 /root/identity.p12", READS),
        ("secret /root/static.key", READS),
        ("http-proxy 127.0.0.1 3128 /root/creds", READS),
        ("http-proxy-user-pass /root/creds", READS),
        ("socks-proxy 127.0.0.1 1080 /root/creds", READS),
        ("crl-verify /etc/crl dir", READS),
        ("capath /etc/ssl/certs", READS),
        ("dh /etc/dh.pem", READS),
    ],
    "name a key file instead of an inline block": [
        ("ca /etc/ssl/certs/ca.pem", INLINE_ONLY),
        ("cert /etc/ssl/node.pem", INLINE_ONLY),
        ("key /etc/ssl/private/node.key", INLINE_ONLY),
        ("extra-certs /etc/ssl/chain.pem", INLINE_ONLY),
        ("tls-auth /etc/openvpn/ta.key 1", INLINE_ONLY),
        ("tls-crypt /etc/openvpn/tc.key", INLINE_ONLY),
        ("tls-crypt-v2 /etc/openvpn/tc2.key", INLINE_ONLY),
    ],
    "create, truncate or write a file": [
        ("log /etc/passwd", WRITES),
        ("log-append /etc/cron.d/evil", WRITES),
        ("status /etc/shadow 10", WRITES),
        ("writepid /etc/passwd", WRITES),
        ("replay-persist /root/.bashrc", WRITES),
        ("ifconfig-pool-persist /etc/hosts", WRITES),
        ("genkey secret /etc/passwd", WRITES),
        ("tls-export-cert /etc", WRITES),
        ("tmp-dir /tmp/evil", WRITES),
        ("memstats /etc/passwd", WRITES),
    ],
    "open a management or listening socket": [
        ("management 127.0.0.1 7505", SOCKET),
        ("management /tmp/mgmt.sock unix", SOCKET),
        ("management-client", SOCKET),
        ("management-hold", SOCKET),
        ("management-query-passwords", SOCKET),
        ("management-external-key", SOCKET),
        ("lport 53", SOCKET),
        ("local 0.0.0.0", SOCKET),
        ("bind", SOCKET),
        ("port-share 127.0.0.1 22", SOCKET),
        ("server 10.8.0.0 255.255.255.0", SOCKET),
        ("mode server", SOCKET),
        ("tls-server", SOCKET),
    ],
    "change the host's network": [
        ("route 0.0.0.0 0.0.0.0", HOST),
        ("route-ipv6 ::/0", HOST),
        ("redirect-gateway def1", HOST),
        ("ifconfig 10.0.0.1 10.0.0.2", HOST),
        ("dhcp-option DNS 192.0.2.53", HOST),
        ("dns search-domain corp.example", HOST),
        ("dev-node /dev/sda", HOST),
        ("lladdr 00:11:22:33:44:55", HOST),
        ("mark 1", HOST),
        ("bind-dev eth0", HOST),
        ("mktun", HOST),
        ("client-nat snat 192.0.2.1 255.255.255.255 198.51.100.1", HOST),
    ],
    "change the daemon's process": [
        ("cd /etc", PROCESS),
        ("chroot /tmp", PROCESS),
        ("daemon", PROCESS),
        ("syslog", PROCESS),
        ("user nobody", PROCESS),
        ("group nogroup", PROCESS),
        ("nice -20", PROCESS),
        ("mlock", PROCESS),
    ],
    "weaken the tunnel": [
        ("compress lz4", WEAKENS),
        ("comp-lzo", WEAKENS),
        ("allow-compression yes", WEAKENS),
        ("ns-cert-type server", WEAKENS),
        ("tls-version-max 1.0", WEAKENS),
        ("no-replay", WEAKENS),
        ("float", WEAKENS),
    ],
    "other options a client profile does not need": [
        ("pull-filter ignore route", UNNEEDED),
        ("push route 192.0.2.0 255.255.255.0", UNNEEDED),
        ("inactive 1", UNNEEDED),
        ("ping-exit 1", UNNEEDED),
        ("static-challenge Pin 1", UNNEEDED),
        ("show-ciphers", UNNEEDED),
        ("version", UNNEEDED),
        ("setenv-safe FOO bar", UNNEEDED),
    ],
}
DIRECTIVE_ROWS = [
    (kind, line, fragment) for kind, rows in DIRECTIVE_CLASSES.items() for line, fragment in rows
]
DIRECTIVE_IDS = [f"{kind}: {line}" for kind, line, _ in DIRECTIVE_ROWS]


def _refused(profile: str) -> str:
    with pytest.raises(VPNError) as caught:
        check_profile(profile)
    return str(caught.value)


def test_the_export_the_tables_start_from_is_accepted() -> None:
    # given the clean export every hostile row is added to
    # when it is checked
    # then it passes, so each refusal below is the row's doing
    assert check_profile(EXPORT) == EXPORT
    with_connection = CONNECTION_HEAD + "</connection>\n"
    assert check_profile(with_connection) == with_connection


@pytest.mark.parametrize(("kind", "line", "fragment"), DIRECTIVE_ROWS, ids=DIRECTIVE_IDS)
def test_a_dangerous_directive_is_refused_naming_its_line_and_why(
    kind: str, line: str, fragment: str
) -> None:
    # given the export with the hostile line after it
    name = line.split(maxsplit=1)[0]
    # when it is checked
    message = _refused(EXPORT + line + "\n")
    # then the refusal names the line and the directive, and says what it would do
    assert message.startswith(f"VPN profile line {NEXT}: directive '{name}' ")
    assert fragment in message


@pytest.mark.parametrize(("kind", "line", "fragment"), DIRECTIVE_ROWS, ids=DIRECTIVE_IDS)
def test_a_dangerous_directive_is_refused_inside_a_connection_block(
    kind: str, line: str, fragment: str
) -> None:
    # given a connection block with the hostile line in it
    profile = CONNECTION_HEAD + line + "\n</connection>\n"
    # when it is checked
    message = _refused(profile)
    # then the refusal names that line inside the block
    assert message.startswith(f"VPN profile line {CONNECTION_NEXT}: directive '{line.split(maxsplit=1)[0]}' ")
    assert fragment in message


@pytest.mark.parametrize(("kind", "line", "fragment"), DIRECTIVE_ROWS, ids=DIRECTIVE_IDS)
def test_a_refusal_never_repeats_the_arguments_of_the_line(kind: str, line: str, fragment: str) -> None:
    # given a hostile line whose arguments might be paths or secrets
    arguments = [token for token in directive_tokens(line)[1:] if len(token) >= 5]
    # when it is refused
    message = _refused(EXPORT + line + "\n")
    # then none of its arguments is in the message
    assert not [argument for argument in arguments if argument in message]


@pytest.mark.parametrize(
    "line",
    [
        "verb 3",
        "cipher AES-256-GCM",
        "dev tun",
        "remote-cert-tls server",
        "verify-x509-name server name",
        "reneg-sec 0",
        "persist-key",
        "client",
    ],
)
def test_a_directive_allowed_only_at_the_top_is_refused_inside_a_connection_block(line: str) -> None:
    # given a connection block holding a directive OpenVPN takes only outside one
    profile = CONNECTION_HEAD + line + "\n</connection>\n"
    name = line.split(maxsplit=1)[0]
    # when it is checked
    message = _refused(profile)
    # then it is refused by its line, as not allowed there
    expected = f"VPN profile line {CONNECTION_NEXT}: directive '{name}' is not allowed inside <connection>"
    assert message == expected


#: Dangerous names spelt the ways OpenVPN's reader (or a sloppy one) could still take them.
SPELLINGS: list[tuple[str, str, str]] = [
    ("--script-security 2", "script-security", RUNS),
    ("--up /tmp/x.sh", "up", RUNS),
    ("   up /tmp/x.sh", "up", RUNS),
    ("\tup /tmp/x.sh", "up", RUNS),
    ('"up" /tmp/x.sh', "up", RUNS),
    ("'up' /tmp/x.sh", "up", RUNS),
    ('"up"/tmp/x.sh', "up", RUNS),
    ("up\t/tmp/x.sh # a trailing comment", "up", RUNS),
    ("UP /tmp/x.sh", "up", "is not allowed, in any case: " + RUNS),
    ("Script-Security 2", "script-security", "is not allowed, in any case: " + RUNS),
    ("SETENV opt up /tmp/x.sh", "setenv", "is not allowed, in any case: " + HIDDEN),
    ("--Log /etc/passwd", "log", "is not allowed, in any case: " + WRITES),
    ("VERB 3", "verb", "must be written in lower case"),
]


@pytest.mark.parametrize(("line", "name", "fragment"), SPELLINGS, ids=[row[0] for row in SPELLINGS])
def test_a_dangerous_name_in_any_spelling_is_refused_by_its_line(line: str, name: str, fragment: str) -> None:
    # given the export with the name spelt with dashes, quotes, blanks or in another case
    # when it is checked
    message = _refused(EXPORT + line + "\n")
    # then it is refused by line, under its lower-case name
    assert message.startswith(f"VPN profile line {NEXT}: directive '{name}' ")
    assert fragment in message


@pytest.mark.parametrize(
    "line",
    [
        "up\\ /tmp/x.sh",  # one token 'up /tmp/x.sh'
        "upp /tmp/x.sh",
        "auth-federate",  # the AWS client's own SAML directive: OpenVPN does not know it
        SECRET,
        "-----BEGIN PRIVATE KEY-----",
    ],
)
def test_an_unknown_first_word_is_refused_without_being_echoed(line: str) -> None:
    # given the export with a line whose first word is no OpenVPN option
    # when it is checked
    message = _refused(EXPORT + line + "\n")
    # then it is refused by its line number alone
    assert (
        message
        == f"VPN profile line {NEXT}: is not a directive a client profile may carry (its text is not shown)"
    )


#: Allowed directives with arguments outside their grammar: (line, fragment of the refusal).
ARGUMENTS: list[tuple[str, str]] = [
    ("verb 7", "needs a decimal number from 0 to 6 (levels above 6 log key material)"),
    ("verb 11", "needs a decimal number from 0 to 6"),
    ("verb 3junk", "needs a decimal number from 0 to 6"),
    ("verb -1", "needs a decimal number from 0 to 6"),
    ("verb 03", "needs a decimal number from 0 to 6"),
    ("verb", "takes 1 argument"),
    ("cipher none", "outside the allowed values"),
    ("cipher BF-CBC", "outside the allowed values"),
    ("auth none", "outside the allowed values"),
    ("auth MD5", "outside the allowed values"),
    ("data-ciphers AES-256-GCM:BF-CBC", "outside the allowed values"),
    ("data-ciphers-fallback none", "outside the allowed values"),
    ("tls-version-min 1.0", "outside the allowed values"),
    ("tls-cert-profile insecure", "outside the allowed values"),
    ("remote-cert-tls client", "outside the allowed values"),
    ("dev-type tap", "outside the allowed values"),
    ("proto tcp-server", "outside the allowed values"),
    ("remote vpn.example.test 443 tcp-server", "outside the allowed values"),
    ("remote vpn.example.test https", "needs a decimal number from 1 to 65535"),
    ("remote vpn.example.test 0", "needs a decimal number from 1 to 65535"),
    ("remote vpn.example.test 65536", "needs a decimal number from 1 to 65535"),
    ("remote fe80::1%eth0 443", "without a zone"),
    ("remote 'vpn example' 443", "needs a DNS name or an IP address"),
    ("remote -vpn.example.test", "needs a DNS name or an IP address"),
    ("remote 1.2.3", "needs a DNS name or an IP address"),
    ("resolv-retry forever", "needs a decimal number"),
    ("key-direction 2", "outside the allowed values"),
    ("keepalive 10", "takes 2 arguments"),
    ("reneg-sec 0 0 0", "takes 1 to 2 arguments"),
    ("tun-mtu 100", "needs a decimal number from 576"),
    ("mssfix 1400 evil", "outside the allowed values"),
    ("client now", "takes 0 arguments"),
    ("remote-random-hostname yes", "takes 0 arguments"),
    ("verify-x509-name 'x\"y'", "outside letters, digits"),
    ("tls-cipher 'DEFAULT NULL'", "outside an OpenSSL cipher list"),
    ("dev tun;x", "needs an interface name"),
    ("dev ../../etc/x", "needs an interface name"),
    ("dev a-name-longer-than-15", "needs an interface name of at most 15"),
]


@pytest.mark.parametrize(("line", "fragment"), ARGUMENTS, ids=[row[0] for row in ARGUMENTS])
def test_an_allowed_directive_with_hostile_arguments_is_refused(line: str, fragment: str) -> None:
    # given the export with an allowed directive whose arguments are outside its grammar
    name = line.split(maxsplit=1)[0]
    # when it is checked
    message = _refused(EXPORT + line + "\n")
    # then it is refused by its line and name, saying what the grammar wants
    assert message.startswith(f"VPN profile line {NEXT}: directive '{name}' ")
    assert fragment in message


@pytest.mark.parametrize("device", ["null", "tap", "tap0", "eth0"])
def test_a_device_that_is_not_a_tun_by_name_or_type_is_refused(device: str) -> None:
    # given the export with its dev line naming a device OpenVPN would not open as a tun
    profile = EXPORT.replace("dev tun\n", f"dev {device}\n")
    # when it is checked
    message = _refused(profile)
    # then the dev line (line 2) is refused
    assert message.startswith("VPN profile line 2: directive 'dev' names a device other than 'tun'")


def _key_line(profile: str) -> int:
    return profile.split("\n").index(SECRET) + 1


KEY_LINE = _key_line(EXPORT)
CA_CLOSE = EXPORT.split("\n").index("</ca>") + 1

#: Whole profiles that try to get a line past the reader: (profile, refused line, fragment of the refusal).
READER: dict[str, tuple[str, int, str]] = {
    "NUL ends the line for OpenVPN": (EXPORT + "verb 3\0up /tmp/x.sh\n", NEXT, "contains a NUL character"),
    "NUL in a key body": (EXPORT.replace(SECRET, SECRET + "\0"), KEY_LINE, "contains a NUL character"),
    "carriage return inside a line": (
        EXPORT + "verb 3\rup /tmp/x.sh\n",
        NEXT,
        "contains a control character",
    ),
    "vertical tab as a blank": (EXPORT + "verb\x0b3\n", NEXT, "contains a control character"),
    "form feed line": (EXPORT + "\x0c\n", NEXT, "contains a control character"),
    "escape sequence": (EXPORT + "# \x1b[2J\n", NEXT, "contains a control character"),
    "delete character": (EXPORT + "verb 3\x7f\n", NEXT, "contains a control character"),
    "no-break space": (EXPORT + "verb\u00a03\n", NEXT, "contains a non-ASCII character"),
    "unicode line separator": (EXPORT + "verb 3\u2028up /tmp/x.sh\n", NEXT, "contains a non-ASCII character"),
    "look-alike letters": (EXPORT + "\uff55p /tmp/x.sh\n", NEXT, "contains a non-ASCII character"),
    "over-long comment whose tail is a directive": (
        EXPORT + "#" + "x" * MAX_LINE_BYTES + "up /tmp/x.sh\n",
        NEXT,
        f"is longer than {MAX_LINE_BYTES} bytes",
    ),
    "over-long body line whose tail closes the block": (
        EXPORT.replace(SECRET, "A" * (MAX_LINE_BYTES + 1) + "</key>\nup /tmp/x.sh"),
        KEY_LINE,
        f"is longer than {MAX_LINE_BYTES} bytes",
    ),
    "body line starting with the closing tag": (
        EXPORT.replace("\n</ca>\n", "\n</ca>junk\nup /tmp/x.sh\n</ca>\n", 1),
        CA_CLOSE,
        "starts with '<' inside the <ca> block",
    ),
    "closing tag in another case": (
        EXPORT.replace("\n</ca>\n", "\n</CA>\nup /tmp/x.sh\n</ca>\n", 1),
        CA_CLOSE,
        "starts with '<' inside the <ca> block",
    ),
    "block tag inside a body": (
        EXPORT.replace(SECRET, "<up>"),
        KEY_LINE,
        "starts with '<' inside the <key> block",
    ),
    "connection closed from inside its tls-auth body": (
        CONNECTION_HEAD
        + "<tls-auth>\n</connection>\nup /tmp/x.sh\n<connection>\n"
        + STATIC_KEY
        + "\n</tls-auth>\n</connection>\n",
        CONNECTION_NEXT + 1,
        "starts with '<' inside the <tls-auth> block",
    ),
    "quoted block tag": (
        EXPORT + '"<tls-auth>"\n' + STATIC_KEY + "\n</tls-auth>\n",
        NEXT,
        "block tag that is not alone",
    ),
    "dashed block tag": (
        EXPORT + "--<tls-auth>\n" + STATIC_KEY + "\n</tls-auth>\n",
        NEXT,
        "block tag that is not alone",
    ),
    "block tag with a comment": (
        EXPORT + "<tls-auth> # x\n" + STATIC_KEY + "\n</tls-auth>\n",
        NEXT,
        "block tag",
    ),
    "block tag in capitals": (EXPORT + "<TLS-AUTH>\n" + STATIC_KEY + "\n</TLS-AUTH>\n", NEXT, "block tag"),
    "closing tag that closes nothing": (EXPORT + "</ca>\n", NEXT, "closes a block that is not open"),
    "connection closed that is not open": (
        EXPORT + "</connection>\n",
        NEXT,
        "closes a block that is not open",
    ),
    "block never closed": (EXPORT + "<tls-auth>\n" + STATIC_KEY + "\n", NEXT, "is never closed"),
    "connection never closed": (
        CONNECTION_HEAD,
        CONNECTION_NEXT - 2,
        "<connection> block that is never closed",
    ),
    "connection inside a connection": (
        CONNECTION_HEAD + "<connection>\nremote b.example.test\n</connection>\n</connection>\n",
        CONNECTION_NEXT,
        "inside another one",
    ),
    "inline up script": (
        EXPORT + "<up>\n/tmp/x.sh\n</up>\n",
        NEXT,
        "directive 'up' is not allowed as an inline block: " + RUNS,
    ),
    "inline credentials": (EXPORT + "<auth-user-pass>\nuser\npass\n</auth-user-pass>\n", NEXT, READS),
    "inline config": (EXPORT + "<config>\nup /tmp/x.sh\n</config>\n", NEXT, HIDDEN),
    "inline pkcs12": (EXPORT + "<pkcs12>\nAAAA\n</pkcs12>\n", NEXT, READS),
    "inline static secret": (EXPORT + "<secret>\n" + STATIC_KEY + "\n</secret>\n", NEXT, READS),
    "inline block of an unknown tag": (
        EXPORT + "<evil>\nx\n</evil>\n",
        NEXT,
        "is not allowed as an inline block",
    ),
    "ca block inside a connection": (
        CONNECTION_HEAD + f"<ca>\n{CA}\n</ca>\n</connection>\n",
        CONNECTION_NEXT,
        "directive 'ca' is not allowed as an inline block inside <connection>",
    ),
    "connection as a plain directive": (EXPORT + "connection /etc/x\n", NEXT, "only as a <connection> block"),
    "backslash before a letter": (EXPORT + "script\\-security 2\n", NEXT, "cannot be parsed"),
    "unclosed quotation": (EXPORT + 'verify-x509-name "server\n', NEXT, "cannot be parsed"),
}


@pytest.mark.parametrize(("profile", "line", "fragment"), READER.values(), ids=READER.keys())
def test_a_line_smuggled_past_the_reader_is_refused(profile: str, line: int, fragment: str) -> None:
    # given a profile that hides a line in a way OpenVPN's reader could take differently
    # when it is checked
    message = _refused(profile)
    # then it is refused at the line where the trick starts
    assert message.startswith(f"VPN profile line {line}: ")
    assert fragment in message
    assert "/tmp/x.sh" not in message
