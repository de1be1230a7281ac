"""Safety check of an OpenVPN client profile handed out by the cloud (PROTOCOL.md section 6).

A profile is run by a root ``openvpn`` daemon, so any directive that makes
OpenVPN run a program is refused before the file is written.  Lines are
read the way OpenVPN's own config parser reads them: split on ``\\n`` only,
tokens split on C whitespace with ``"``/``'`` quoting and backslash escapes,
a leading ``--`` dropped, ``#``/``;`` starting a comment, ``<tag>`` lines
opening an inline block whose body is data, not directives.  Where the two
readers could disagree, this one errs towards refusing: directive names are
compared without case, ``<connection>`` bodies are checked as directives,
and a line OpenVPN would split or choke on is refused outright.  Error
messages name a line number and a fixed directive name, never profile text
(a profile carries a private key).
"""

from __future__ import annotations

from ..errors import VPNError

__all__ = ["FORBIDDEN_DIRECTIVES", "MAX_LINE_BYTES", "RENEG_SEC_LINE", "check_profile", "directive_tokens"]

#: Directives that make OpenVPN run commands or load code; never allowed in a profile.
FORBIDDEN_DIRECTIVES = frozenset(
    {
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
    }
)
#: Appended when the profile sets no renegotiation period: the server alone decides when to rekey.
RENEG_SEC_LINE = "reneg-sec 0"
#: OpenVPN reads config lines into a 256-byte buffer; a longer line is split and its tail read as a new line.
MAX_LINE_BYTES = 254
#: Inline blocks whose body OpenVPN parses as directives, not data.
_DIRECTIVE_BLOCKS = frozenset({"connection"})
#: What C's ``isspace`` accepts, plus the string terminator OpenVPN's tokenizer also treats as a break.
_C_SPACE = frozenset(" \t\n\v\f\r\0")
#: What a backslash may stand before, outside single quotes.
_ESCAPABLE = frozenset('\\"') | _C_SPACE
_BOM = "\ufeff"


class _ParseError(ValueError):
    """A line OpenVPN itself would refuse to tokenize."""


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
        out: str | None = None
        done = False
        if state == "space":
            if char not in _C_SPACE:
                if char in "#;":
                    break  # a comment, escaped or not
                if not escaped and char == '"':
                    state = "dquote"
                elif not escaped and char == "'":
                    state = "squote"
                else:
                    out, state = char, "bare"
        elif state == "bare":
            if not escaped and char in _C_SPACE:
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


def _directive_name(token: str) -> str:
    """The option name of a first token: OpenVPN drops a leading ``--``; compared without case here."""
    if len(token) >= 3 and token.startswith("--"):
        token = token[2:]
    return token.lower()


def _inline_tag(tokens: list[str]) -> str | None:
    """The tag of an inline-block opening line (``<ca>`` alone on its line), else ``None``."""
    if len(tokens) != 1:
        return None
    token = tokens[0]
    if len(token) >= 3 and token.startswith("--"):
        token = token[2:]
    if len(token) >= 2 and token[0] == "<" and token[-1] == ">":
        return token[1:-1]
    return None


def _closes(line: str, tag: str) -> bool:
    """Whether ``line`` ends the inline block ``tag`` (leading blanks skipped, prefix match, any case)."""
    return line.lstrip("".join(_C_SPACE)).lower().startswith(f"</{tag.lower()}>")


def _refuse(number: int, name: str) -> VPNError:
    return VPNError(f"VPN profile line {number}: directive '{name}' runs commands and is not allowed")


def check_profile(text: str) -> str:
    """Refuse a profile with a directive that runs commands; return it with ``reneg-sec 0`` ensured."""
    if not text.strip():
        raise VPNError("VPN profile is empty")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    data_tag: str | None = None  # the inline block being skipped, if any
    data_start = 0
    in_connection = False
    connection_start = 0
    has_reneg = False
    for number, raw in enumerate(lines, start=1):
        line = raw[1:] if number == 1 and raw.startswith(_BOM) else raw
        if "\0" in line:
            raise VPNError(f"VPN profile line {number} contains a NUL character")
        if len(line.encode("utf-8", errors="surrogatepass")) > MAX_LINE_BYTES:
            raise VPNError(
                f"VPN profile line {number} is longer than {MAX_LINE_BYTES} bytes, which OpenVPN would split"
            )
        if in_connection and _closes(line, "connection"):
            in_connection, data_tag = False, None
            continue
        if data_tag is not None:
            if _closes(line, data_tag):
                data_tag = None
            continue
        try:
            tokens = directive_tokens(line)
        except _ParseError as exc:
            raise VPNError(f"VPN profile line {number} cannot be parsed: {exc}") from None
        if not tokens:
            continue
        tag = _inline_tag(tokens)
        name = _directive_name(tag if tag is not None else tokens[0])
        if name in FORBIDDEN_DIRECTIVES:
            raise _refuse(number, name)
        if tag is not None:
            if name in _DIRECTIVE_BLOCKS:
                in_connection, connection_start = True, number
            else:
                data_tag, data_start = tag, number
            continue
        if name == "reneg-sec" and not in_connection:
            has_reneg = True
    if data_tag is not None:
        raise VPNError(f"VPN profile line {data_start}: inline block is never closed")
    if in_connection:
        raise VPNError(f"VPN profile line {connection_start}: <connection> block is never closed")
    if has_reneg:
        return text
    separator = "" if text.endswith("\n") else "\n"
    return f"{text}{separator}{RENEG_SEC_LINE}\n"
