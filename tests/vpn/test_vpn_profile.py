"""The profile allow-list: what a client profile of the cloud may carry, and the canonical text it becomes.

The hostile cases, class by class, are in ``test_vpn_profile_hostile.py``.
"""

from __future__ import annotations

import re

import pytest

from coda_bridge.errors import VPNError
from coda_bridge.vpn.directives import (
    ALLOWED_DIRECTIVES,
    CONNECTION_DIRECTIVES,
    INLINE_BLOCKS,
    MAX_VERB_LEVEL,
    REFUSED_DIRECTIVES,
)
from coda_bridge.vpn.profile import MAX_LINE_BYTES, check_profile, directive_tokens

SECRET = "U0VDUkVUS0VZTUFURVJJQUw="
CA = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUeQ==\n-----END CERTIFICATE-----"
KEY = f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----"
STATIC_KEY = (
    "#\n# 2048 bit OpenVPN static key\n#\n-----BEGIN OpenVPN Static key V1-----\n"
    "0123456789abcdef0123456789abcdef\n-----END OpenVPN Static key V1-----"
)
HEAD = (
    "client\n"
    "dev tun\n"
    "proto udp\n"
    "remote cvpn-endpoint-0abc.prod.clientvpn.us-east-1.amazonaws.com 443\n"
    "remote-random-hostname\n"
    "resolv-retry infinite\n"
    "nobind\n"
    "remote-cert-tls server\n"
    "cipher AES-256-GCM\n"
    "verify-x509-name server name\n"
    "verb 3\n"
)
BLOCKS = f"<ca>\n{CA}\n</ca>\n<cert>\n{CA}\n</cert>\n<key>\n{KEY}\n</key>\n"
#: An AWS Client VPN export, already in canonical form.
AWS_EXPORT = HEAD + BLOCKS + "reneg-sec 0\n"
#: The number of the first line after the export.
NEXT_LINE = AWS_EXPORT.count("\n") + 1
#: The profile without its top-level ``remote``, for ``<connection>`` blocks to add theirs.
NO_REMOTE = AWS_EXPORT.replace("remote cvpn-endpoint-0abc.prod.clientvpn.us-east-1.amazonaws.com 443\n", "")
#: The twelve directives PROTOCOL.md section 6 names.
PROTOCOL_TWELVE = (
    "script-security",
    "up",
    "down",
    "client-connect",
    "client-disconnect",
    "learn-address",
    "auth-user-pass-verify",
    "tls-verify",
    "ipchange",
    "route-up",
    "route-pre-down",
    "plugin",
)


def _last_line(profile: str) -> str:
    return profile.rstrip("\n").rsplit("\n", 1)[-1]


# -- what is accepted, and how it is written back --


def test_an_aws_client_vpn_export_is_accepted_and_written_back_unchanged() -> None:
    # given a profile shaped like an AWS Client VPN export, in canonical form
    # when it is checked
    checked = check_profile(AWS_EXPORT)
    # then it is written back byte for byte
    assert checked == AWS_EXPORT


def test_comments_blank_lines_crs_a_bom_and_indentation_are_dropped_from_what_is_written() -> None:
    # given the export with a BOM, CRLF line ends, comments, blank and indented lines and trailing comments
    messy = "\ufeff# exported by AWS\r\n; generated\r\n\r\n" + AWS_EXPORT.replace("\n", "\r\n")
    messy = messy.replace("verb 3", "   verb 3   # chatty enough").replace("</key>", "  </key>  ")
    # when it is checked
    checked = check_profile(messy)
    # then what is written is the canonical export
    assert checked == AWS_EXPORT


def test_quoting_is_normalised_to_what_openvpn_reads_back() -> None:
    # given names written with --, single quotes and escaped blanks
    profile = NO_REMOTE + "--remote vpn.example.test 1194\nverify-x509-name 'C=US, O=Coda, CN=vpn' subject\n"
    # when it is checked
    checked = check_profile(profile)
    # then the directive loses its dashes and the name is double-quoted
    assert "\nremote vpn.example.test 1194\n" in checked
    assert _last_line(checked) == 'verify-x509-name "C=US, O=Coda, CN=vpn" subject'
    assert directive_tokens(_last_line(checked))[1] == "C=US, O=Coda, CN=vpn"


@pytest.mark.parametrize(
    "profile",
    [
        AWS_EXPORT,
        HEAD + BLOCKS,
        NO_REMOTE + "<connection>\nremote a.example.test 443 udp\n</connection>\n",
        AWS_EXPORT + "verify-x509-name 'CN=a b' subject\n",
        AWS_EXPORT + "<tls-crypt>\n" + STATIC_KEY + "\n</tls-crypt>\n",
    ],
)
def test_a_written_profile_checks_again_to_itself(profile: str) -> None:
    # given a profile written by the check (as a restart reads it back)
    written = check_profile(profile)
    # when it is checked again
    again = check_profile(written)
    # then nothing changes
    assert again == written


def test_reneg_sec_0_is_appended_only_when_the_profile_sets_none() -> None:
    # given profiles without reneg-sec, with one, and with one only in a comment
    without = HEAD + BLOCKS
    with_one = HEAD + "reneg-sec 3600\n" + BLOCKS
    commented = HEAD + "# reneg-sec 60\n" + BLOCKS
    # when they are checked
    # then reneg-sec 0 ends the first and third, and the second keeps its own
    assert check_profile(without) == HEAD + BLOCKS + "reneg-sec 0\n"
    assert check_profile(with_one) == with_one
    assert check_profile(commented).count("reneg-sec") == 1
    assert check_profile(commented).endswith("\nreneg-sec 0\n")


@pytest.mark.parametrize("tag", ["tls-auth", "tls-crypt", "tls-crypt-v2"])
def test_optional_tls_key_blocks_are_accepted_with_their_body_kept(tag: str) -> None:
    # given the export with a static-key block, its comment lines included
    profile = AWS_EXPORT + "key-direction 1\n" + f"<{tag}>\n{STATIC_KEY}\n</{tag}>\n"
    # when it is checked
    checked = check_profile(profile)
    # then the block is written as given
    assert checked == profile


def test_connection_blocks_may_carry_their_own_remote_transport_and_tls_crypt() -> None:
    # given two connection blocks, the second with its own proto and tls-crypt
    profile = (
        NO_REMOTE
        + "<connection>\nremote a.example.test 443 udp\nconnect-timeout 10\n</connection>\n"
        + "<connection>\nremote b.example.test 443\nproto tcp-client\n"
        + f"<tls-crypt>\n{STATIC_KEY}\n</tls-crypt>\n</connection>\n"
    )
    # when it is checked
    checked = check_profile(profile)
    # then both blocks are written as given
    assert checked == profile


@pytest.mark.parametrize(
    ("line", "canonical"),
    [
        ("proto tcp-client", "proto tcp-client"),
        ("dev tun0", "dev tun0"),
        ("remote 192.0.2.7 1194 tcp", "remote 192.0.2.7 1194 tcp"),
        ("remote 2001:DB8::1 443 udp6", "remote 2001:db8::1 443 udp6"),
        ("remote vpn.example.test.", "remote vpn.example.test."),
        ("persist-key", "persist-key"),
        ("persist-tun", "persist-tun"),
        ("route-nopull", "route-nopull"),
        ("cipher aes-256-gcm", "cipher AES-256-GCM"),
        (
            "data-ciphers AES-256-GCM:aes-128-gcm:CHACHA20-POLY1305",
            "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
        ),
        ("auth sha256", "auth SHA256"),
        ("tls-version-min 1.2 or-highest", "tls-version-min 1.2 or-highest"),
        (
            "tls-cipher TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384",
            "tls-cipher TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384",
        ),
        ("verb 0", "verb 0"),
        (f"verb {MAX_VERB_LEVEL}", f"verb {MAX_VERB_LEVEL}"),
        ("mute 20", "mute 20"),
        ("reneg-sec 28800", "reneg-sec 28800"),
        ("keepalive 10 60", "keepalive 10 60"),
        ("connect-retry 5 300", "connect-retry 5 300"),
        ("explicit-exit-notify", "explicit-exit-notify"),
        ("mssfix 1400 mtu", "mssfix 1400 mtu"),
        ("auth-nocache", "auth-nocache"),
        ("\t--persist-key   ; trailing comment", "persist-key"),
    ],
)
def test_each_allowed_form_is_accepted_and_written_canonically(line: str, canonical: str) -> None:
    # given the export with one more allowed line
    # when it is checked
    checked = check_profile(AWS_EXPORT + line + "\n")
    # then the line is written in its canonical form, last
    assert _last_line(checked) == canonical


def test_the_profile_shape_of_the_real_tunnel_test_is_accepted() -> None:
    # given the profile tests/vpn/test_vpn_tunnel.py hands out: a named tun device and route-nopull
    profile = (
        "client\ndev codatun12345\ndev-type tun\nproto udp\nremote 10.213.1.1 11940\nnobind\nroute-nopull\n"
        "remote-cert-tls server\npersist-tun\nconnect-retry 1\nverb 3\n" + BLOCKS
    )
    # when it is checked
    checked = check_profile(profile)
    # then it is kept, with reneg-sec 0 appended
    assert checked == profile + "reneg-sec 0\n"


def test_a_device_not_named_tun_needs_dev_type_tun() -> None:
    # given a device named codatun7, once without and once with dev-type tun (written after it)
    without = AWS_EXPORT.replace("dev tun\n", "dev codatun7\n")
    with_type = without + "dev-type tun\n"
    # when they are checked
    # then only the one that says it is a tun device passes, and the refusal names the dev line
    with pytest.raises(VPNError, match=r"^VPN profile line 2: directive 'dev' names a device other than"):
        check_profile(without)
    assert check_profile(with_type).endswith("dev-type tun\n")


def test_a_line_of_max_line_bytes_is_accepted_and_one_more_byte_is_refused() -> None:
    # given comment and key-body lines of exactly MAX_LINE_BYTES, and of one byte more
    fits_comment = AWS_EXPORT + "#" + "x" * (MAX_LINE_BYTES - 1) + "\n"
    fits_body = AWS_EXPORT.replace(SECRET, "A" * MAX_LINE_BYTES)
    long_comment = AWS_EXPORT + "#" + "x" * MAX_LINE_BYTES + "\n"
    long_body = AWS_EXPORT.replace(SECRET, "A" * (MAX_LINE_BYTES + 1))
    # when they are checked
    # then the fitting ones pass, and the long ones are refused by line number
    assert check_profile(fits_comment) == AWS_EXPORT
    assert "A" * MAX_LINE_BYTES in check_profile(fits_body)
    with pytest.raises(
        VPNError, match=rf"^VPN profile line {NEXT_LINE}: is longer than {MAX_LINE_BYTES} bytes"
    ):
        check_profile(long_comment)
    key_line = AWS_EXPORT.split("\n").index(SECRET) + 1
    with pytest.raises(
        VPNError, match=rf"^VPN profile line {key_line}: is longer than {MAX_LINE_BYTES} bytes"
    ):
        check_profile(long_body)


def test_an_empty_profile_is_refused() -> None:
    with pytest.raises(VPNError, match=r"^VPN profile is empty$"):
        check_profile(" \n\n\t\n")


# -- PROTOCOL.md's twelve, and the vocabulary --


@pytest.mark.parametrize("directive", PROTOCOL_TWELVE)
def test_each_directive_protocol_md_names_is_refused_by_its_line_number(directive: str) -> None:
    # given the export with one of the twelve after a comment line
    profile = AWS_EXPORT + "# a comment\n" + f"{directive} /usr/bin/true\n"
    # when it is checked
    # then it is refused as running a program, naming its line and the directive
    with pytest.raises(VPNError) as caught:
        check_profile(profile)
    assert str(caught.value) == (
        f"VPN profile line {NEXT_LINE + 1}: directive '{directive}' is not allowed: "
        "it runs a program or loads code into the root daemon"
    )


def test_the_allow_list_and_the_refused_vocabulary_are_disjoint_lower_case_option_names() -> None:
    # given the allow-list, the inline blocks and the refused vocabulary
    names = [*ALLOWED_DIRECTIVES, *INLINE_BLOCKS, *REFUSED_DIRECTIVES]
    # then no name is in two of them, every name is spelt as OpenVPN spells options,
    # and <connection> allows only directives that are allowed at the top too
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) for name in names)
    assert set(ALLOWED_DIRECTIVES) >= CONNECTION_DIRECTIVES
    assert {"verb", "cipher", "remote"} <= set(ALLOWED_DIRECTIVES)
    assert not {"setenv", "config", "log", "management", "auth-user-pass", "providers"} & set(
        ALLOWED_DIRECTIVES
    )


def test_the_inline_blocks_connection_may_hold_are_the_tls_key_blocks_only() -> None:
    assert {tag for tag, in_connection in INLINE_BLOCKS.items() if in_connection} == {
        "tls-auth",
        "tls-crypt",
        "tls-crypt-v2",
    }


# -- the reader --


@pytest.mark.parametrize(
    ("line", "tokens"),
    [
        ('remote "a b" 1194 # comment', ["remote", "a b", "1194"]),
        ("verb 3#x", ["verb", "3#x"]),
        ("mute 3;x", ["mute", "3;x"]),
        ("auth-user-pass a\\ b", ["auth-user-pass", "a b"]),
        ("cd 'C:\\dir'", ["cd", "C:\\dir"]),
        ('"up"extra', ["up", "extra"]),
        ('a "b\\"c"', ["a", 'b"c']),
        ("a b\\\\c", ["a", "b\\c"]),
        ("  ;comment", []),
        ("\\# still a comment", []),
        ("a\tb\rc", ["a", "b", "c"]),
    ],
)
def test_tokens_follow_openvpn_quoting_escapes_and_comments(line: str, tokens: list[str]) -> None:
    assert directive_tokens(line) == tokens


def test_errors_never_carry_profile_text() -> None:
    # given profiles whose refused lines carry a key, a path and an unknown word
    cases = [
        AWS_EXPORT + SECRET + "\n",
        AWS_EXPORT + "askpass /root/SECRET-PATH\n",
        AWS_EXPORT + "tls-verify /bin/sh -c 'cat /secret'\n",
        AWS_EXPORT + "hunter2 /root/SECRET-PATH\n",
        AWS_EXPORT + "<hunter2>\nx\n</hunter2>\n",
    ]
    for profile in cases:
        # when each is checked
        with pytest.raises(VPNError) as caught:
            check_profile(profile)
        # then the error names the line but none of its text beyond a known directive name
        message = str(caught.value)
        assert message.startswith(f"VPN profile line {NEXT_LINE}: ")
        for secret in (SECRET, "SECRET-PATH", "/secret", "hunter2"):
            assert secret not in message
