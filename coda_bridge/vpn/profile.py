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

import re
from collections.abc import Mapping

from ..errors import VPNError
from .directives import (
    ALLOWED_DIRECTIVES,
    CONNECTION_BLOCK,
    INLINE_BLOCKS,
    REFUSED_DIRECTIVES,
    BadArguments,
)

__all__ = ["MAX_LINE_BYTES", "RENEG_SEC_LINE", "check_profile", "directive_tokens"]

#: Appended when the profile sets no renegotiation period: the server alone decides when to rekey.
RENEG_SEC_LINE = "reneg-sec 0"
#: OpenVPN reads config lines into a 256-byte buffer; a longer line is split and its tail read as a new line.
MAX_LINE_BYTES = 254
#: What C's ``isspace`` accepts: OpenVPN's token separators.
_C_SPACE = frozenset(" \t\n\v\f\r")
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


#: Inline-block directives given a path instead: root would read that file.
_PATH_FORM = "is allowed only as an inline <{tag}> block: a path would make root read that file"
_TAG = re.compile(r"<([a-z0-9-]{1,40})>")
_CLOSING_TAG = re.compile(r"</([a-z0-9-]{1,40})>")


def _known(name: str) -> bool:
    """Whether ``name`` is an OpenVPN option, so an error may echo it without echoing profile text."""
    vocabularies: tuple[Mapping[str, object], ...] = (ALLOWED_DIRECTIVES, REFUSED_DIRECTIVES, INLINE_BLOCKS)
    return name == CONNECTION_BLOCK or any(name in vocabulary for vocabulary in vocabularies)


def _error(number: int, reason: str, name: str | None = None) -> VPNError:
    where = f"VPN profile line {number}"
    if name is not None and _known(name):
        return VPNError(f"{where}: directive '{name}' {reason}")
    return VPNError(f"{where}: {reason}")


def _refusal(number: int, name: str, where: str = "") -> VPNError:
    """The error for a directive outside the allow-list; unknown names are not echoed."""
    if name == CONNECTION_BLOCK:
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
                if inside_connection and closing.group(1) == CONNECTION_BLOCK:
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
            except BadArguments as exc:
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
        if tag == CONNECTION_BLOCK:
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
