"""The profile check: directives that run commands are refused by line, as OpenVPN would read the line."""

from __future__ import annotations

import pytest

from coda_bridge.errors import VPNError
from coda_bridge.vpn.profile import FORBIDDEN_DIRECTIVES, MAX_LINE_BYTES, check_profile, directive_tokens

HEAD = "client\ndev tun\nproto udp\nremote vpn.example.test 1194\nnobind\n"
KEY = "<key>\n-----BEGIN PRIVATE KEY-----\nU0VDUkVUS0VZTUFURVJJQUw=\n-----END PRIVATE KEY-----\n</key>\n"


def _refusal(line: int, name: str) -> str:
    return rf"^VPN profile line {line}: directive '{name}' runs commands and is not allowed$"


def test_the_protocol_names_twelve_directives() -> None:
    assert len(FORBIDDEN_DIRECTIVES) == 12


@pytest.mark.parametrize("directive", sorted(FORBIDDEN_DIRECTIVES))
def test_each_dangerous_directive_is_refused_with_its_line_number(directive: str) -> None:
    profile = HEAD + "# a comment\n" + f"{directive} /usr/bin/true\n" + "verb 3\n"
    with pytest.raises(VPNError, match=_refusal(7, directive)):
        check_profile(profile)


@pytest.mark.parametrize(
    "line",
    [
        "up /bin/sh",
        "up",
        "--up /bin/sh",
        "   up /bin/sh",
        "\tup /bin/sh",
        "UP /bin/sh",
        "Up /bin/sh",
        '"up" /bin/sh',
        "'up' /bin/sh",
        '"up"/bin/sh',
        "up\t/bin/sh # trailing comment",
        "<up>",
        "--<up>",
    ],
)
def test_spellings_openvpn_accepts_or_might_accept_are_refused(line: str) -> None:
    with pytest.raises(VPNError, match=_refusal(6, "up")):
        check_profile(HEAD + line + "\n/bin/sh\n</up>\n")


def test_line_numbers_count_crlf_lines_and_skip_a_bom() -> None:
    with pytest.raises(VPNError, match=_refusal(3, "plugin")):
        check_profile("client\r\ndev tun\r\nplugin /x.so\r\n")
    with pytest.raises(VPNError, match=_refusal(1, "up")):
        check_profile("\ufeffup /bin/sh\n")


def test_comments_blank_lines_and_trailing_comments_are_ignored() -> None:
    profile = HEAD + "\n   \n# up /bin/sh\n; plugin x.so\n   # script-security 2\nverb 3 # up\nreneg-sec 0\n"
    assert check_profile(profile) == profile


def test_inline_block_content_is_data_not_directives() -> None:
    profile = (
        HEAD
        + "<ca>\nup /bin/sh\nplugin evil.so\nscript-security 2\n  </ca>\n"
        + "<tls-crypt>\n#\ndown x\n</tls-crypt>\n"
        + KEY
        + "reneg-sec 0\n"
    )
    assert check_profile(profile) == profile


def test_a_directive_after_an_inline_block_is_still_checked() -> None:
    with pytest.raises(VPNError, match=_refusal(11, "route-up")):
        check_profile(HEAD + KEY + "route-up /bin/sh\n")


def test_connection_blocks_hold_directives_and_are_checked() -> None:
    profile = HEAD + "<connection>\nremote a.example.test 1194\nipchange /bin/sh\n</connection>\n"
    with pytest.raises(VPNError, match=_refusal(8, "ipchange")):
        check_profile(profile)
    closed = HEAD + "<connection>\nremote a.example.test\n<ca>\nup x\n</ca>\n</connection>\nreneg-sec 5\n"
    assert check_profile(closed) == closed


def test_reneg_sec_zero_is_appended_when_missing() -> None:
    assert check_profile(HEAD) == HEAD + "reneg-sec 0\n"
    assert check_profile("client\nverb 3") == "client\nverb 3\nreneg-sec 0\n"
    assert check_profile(HEAD + "# reneg-sec 60\n").endswith("# reneg-sec 60\nreneg-sec 0\n")
    inline_only = HEAD + "<ca>\nreneg-sec 60\n</ca>\n"
    assert check_profile(inline_only) == inline_only + "reneg-sec 0\n"


@pytest.mark.parametrize("line", ["reneg-sec 3600", "--reneg-sec 60", "  reneg-sec 0"])
def test_an_existing_reneg_sec_is_kept(line: str) -> None:
    profile = HEAD + line + "\n"
    assert check_profile(profile) == profile


def test_a_line_openvpn_would_split_is_refused() -> None:
    smuggled = HEAD + "<ca>\n" + "A" * 255 + "</ca>\nup /bin/sh\n</ca>\n"
    with pytest.raises(VPNError, match=rf"line 7 is longer than {MAX_LINE_BYTES} bytes"):
        check_profile(smuggled)
    fits = HEAD + "<ca>\n" + "A" * MAX_LINE_BYTES + "\n</ca>\n"
    assert check_profile(fits).endswith("reneg-sec 0\n")


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("", "VPN profile is empty"),
        (HEAD + "<ca>\nabc\n", "line 6: inline block is never closed"),
        (HEAD + "<connection>\nremote x\n", "line 6: <connection> block is never closed"),
        (HEAD + 'verb "3\n', "line 6 cannot be parsed"),
        (HEAD + "u\\p /bin/sh\n", "line 6 cannot be parsed"),
        (HEAD + "verb\x003\n", "line 6 contains a NUL character"),
    ],
)
def test_profiles_openvpn_could_misread_are_refused(profile: str, message: str) -> None:
    with pytest.raises(VPNError, match=message):
        check_profile(profile)


def test_errors_never_carry_profile_content() -> None:
    with pytest.raises(VPNError) as caught:
        check_profile(HEAD + KEY + "tls-verify /bin/sh -c 'cat /secret'\n")
    assert "U0VDUkVU" not in str(caught.value)
    assert "/secret" not in str(caught.value)


def test_tokens_follow_openvpn_quoting() -> None:
    assert directive_tokens('remote "a b" 1194 # comment') == ["remote", "a b", "1194"]
    assert directive_tokens("auth-user-pass a\\ b") == ["auth-user-pass", "a b"]
    assert directive_tokens("cd 'C:\\dir'") == ["cd", "C:\\dir"]
    assert directive_tokens('"up"extra') == ["up", "extra"]
    assert directive_tokens("  ;comment") == []
