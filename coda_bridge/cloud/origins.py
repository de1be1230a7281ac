"""Where results and JWTs may go: exactly the cloud's own origin, or one the operator listed.

An origin is a scheme, a host and a port.  ``urllib.parse`` and requests
read hostile URLs differently (for ``http://a\\@b/`` urlsplit sees ``b``
while requests connects to ``a``), so a URL is read twice here:

1. strictly, refusing whatever two URL readers could disagree on
   (backslashes, whitespace, control and non-ASCII characters, userinfo,
   percent signs in the host, fragments, odd ports, numeric hosts that are
   not dotted quads, IPv6 zone ids and IPv4-mapped addresses);
2. as requests will send it: the prepared URL must give the same origin
   to this strict reader, to ``urllib.parse`` (which requests >= 2.32 uses
   to pick the connection) and to urllib3 (which older requests used).

The origin both readings agree on is then compared, whole, with the allowed
ones.  Messages name what was wrong and never repeat a URL, which may carry
a secret in its path or query; they show an origin at most.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

import requests
import urllib3.util

from ..errors import CodaError

__all__ = [
    "DEFAULT_PORTS",
    "Origin",
    "OriginError",
    "allowed_callback_origins",
    "base_origin",
    "callback_allowed",
    "callback_refusal",
    "origin_entry",
    "origin_of",
    "origins_of",
    "sent_origin",
    "sent_url",
]

#: The port each scheme uses when a URL names none.
DEFAULT_PORTS = {"http": 80, "https": 443}
#: Longest URL read at all, in characters (a callback URL is a few dozen).
MAX_URL_CHARS = 2048
#: Longest host name DNS allows, in characters.
MAX_HOST_CHARS = 253

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)", re.S)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PORT = re.compile(r"[1-9][0-9]{0,4}")


class OriginError(CodaError):
    """A URL cannot be read unambiguously, or is not one results and JWTs may go to."""


class Origin(NamedTuple):
    """Scheme, host and port, lower-cased, with the scheme's default port filled in."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def _ipv6(literal: str) -> str:
    try:
        address = ipaddress.IPv6Address(literal)
    except ValueError:
        raise OriginError("URL has a malformed IPv6 address") from None
    if address.scope_id is not None:
        raise OriginError("URL has an IPv6 zone id")
    if address.ipv4_mapped is not None:
        raise OriginError("URL has an IPv4-mapped IPv6 address")
    return f"[{address.compressed}]"


def _host(raw: str) -> str:
    if raw.startswith("["):
        if not raw.endswith("]"):
            raise OriginError("URL has a malformed IPv6 address")
        return _ipv6(raw[1:-1])
    host = raw.lower()
    if not host:
        raise OriginError("URL has no host")
    if _IPV4.fullmatch(host):
        return host
    if host.endswith("."):
        raise OriginError("URL host ends with a dot")
    labels = host.split(".")
    if len(host) > MAX_HOST_CHARS or not all(_LABEL.fullmatch(label) for label in labels):
        raise OriginError("URL host is not a DNS name or an IP address")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # 127.1, 2130706433 and 0x7f.1 all reach 127.0.0.x through getaddrinfo
        raise OriginError("URL host is numeric but not a dotted-quad IPv4 address")
    return host


def _split(url: object) -> tuple[Origin, str]:
    """The origin of ``url`` and what follows its authority, read strictly."""
    if not isinstance(url, str):
        raise OriginError("URL is not a string")
    if not url or len(url) > MAX_URL_CHARS:
        raise OriginError(f"URL is empty or longer than {MAX_URL_CHARS} characters")
    if any(not "!" <= char <= "~" for char in url):
        raise OriginError("URL has whitespace, control or non-ASCII characters")
    if "\\" in url:
        raise OriginError("URL has a backslash")
    match = _URL.fullmatch(url)
    if match is None:
        raise OriginError("URL is not of the form scheme://host[:port]/path")
    scheme = match["scheme"].lower()
    if scheme not in DEFAULT_PORTS:
        raise OriginError("URL scheme is not http or https")
    rest = match["rest"]
    if "#" in rest:
        raise OriginError("URL has a fragment")
    authority = match["authority"]
    if "@" in authority:
        raise OriginError("URL has userinfo")
    if "%" in authority:
        raise OriginError("URL host is percent-encoded")
    if authority.startswith("["):
        end = authority.find("]") + 1
        host, port_text = authority[:end], authority[end:]
        if not end or (port_text and not port_text.startswith(":")):
            raise OriginError("URL has a malformed IPv6 address")
    else:
        host, colon, port_text = authority.partition(":")
        port_text = colon + port_text
    port = DEFAULT_PORTS[scheme]
    if port_text:
        digits = port_text[1:]
        if not _PORT.fullmatch(digits) or int(digits) > 65535:
            raise OriginError("URL port is empty, not canonical or out of range")
        port = int(digits)
    return Origin(scheme, _host(host), port), rest


def origin_of(url: str) -> Origin:
    """The origin of ``url`` read strictly; :class:`OriginError` on anything two readers may read apart."""
    return _split(url)[0]


def base_origin(url: str) -> Origin:
    """The origin of a base URL such as ``webapp_url``: an origin and maybe a path, no query."""
    origin, rest = _split(url)
    if "?" in rest:
        raise OriginError("base URL has a query")
    return origin


def origin_entry(entry: str) -> Origin:
    """One allow-list entry: ``scheme://host[:port]``, or a bare host name, meaning https on port 443."""
    if not isinstance(entry, str):
        raise OriginError("entry is not a string")
    origin, rest = _split(entry if "://" in entry else f"https://{entry}")
    if rest not in ("", "/"):
        raise OriginError(f"entry for {origin} has a path or query; an origin is scheme://host[:port]")
    return origin


def origins_of(entries: Iterable[str], setting: str) -> frozenset[Origin]:
    """The origins of an allow-list setting; :class:`OriginError` naming the setting and entry."""
    found = set()
    for number, entry in enumerate(entries, start=1):
        try:
            found.add(origin_entry(entry))
        except OriginError as exc:
            raise OriginError(f"{setting} entry {number}: {exc}") from None
    return frozenset(found)


@functools.lru_cache(maxsize=64)
def _callback_origins(webapp_url: str, allowed_hosts: tuple[str, ...]) -> frozenset[Origin]:
    return origins_of(allowed_hosts, "allowed_callback_hosts") | {base_origin(webapp_url)}


def allowed_callback_origins(webapp_url: str, allowed_hosts: Sequence[str]) -> frozenset[Origin]:
    """The cloud's own origin and every one ``allowed_callback_hosts`` lists."""
    return _callback_origins(webapp_url, tuple(allowed_hosts))


def _loose(scheme: str, host: str, port: int | None) -> Origin:
    """An origin as a lenient reader gave it, in this module's text form."""
    scheme, host = scheme.lower(), host.lower()
    if ":" in host.strip("[]"):
        host = _ipv6(host.strip("[]"))
    return Origin(scheme, host, port or DEFAULT_PORTS.get(scheme, 0))


#: Distinct scheme-and-authority prefixes whose readers' agreement is kept (one per cloud, in practice).
AGREED_ORIGINS_CACHE_SIZE = 256


def sent_origin(url: str) -> Origin:
    """The origin requests connects to for ``url``, when every reader agrees on it.

    The strict reading has already refused what could make the readers end
    the authority at different places (backslashes, blanks, control or
    non-ASCII characters, userinfo, escapes in the host), so their agreement
    depends on the scheme and authority alone: :func:`sent_url`'s full check
    runs once per authority, not once per job's callback URL.
    """
    origin, _ = _split(url)
    match = _URL.fullmatch(url)
    assert match is not None  # _split accepted it
    if _agreed_origin(f"{match['scheme']}://{match['authority']}/") != origin:
        raise OriginError("URL readers disagree about its origin")
    return origin


@functools.lru_cache(
    maxsize=AGREED_ORIGINS_CACHE_SIZE
)  # a pure function of the string; refusals are not kept
def _agreed_origin(base: str) -> Origin:
    return sent_url(base)[1]


def sent_url(url: str) -> tuple[str, Origin]:
    """``url`` as requests sends it, and the origin it connects to, when every reader agrees on it.

    Raises :class:`OriginError` when the strict reading refuses ``url``,
    requests refuses to prepare it, or the prepared URL reads differently
    under ``urllib.parse``, urllib3 or the strict reader.
    """
    origin = origin_of(url)
    try:
        prepared = requests.Request("POST", url).prepare().url
    except (requests.RequestException, ValueError, UnicodeError):
        raise OriginError("requests refuses the URL") from None
    if not isinstance(prepared, str):
        raise OriginError("requests refuses the URL")
    try:
        split = urlsplit(prepared)
        parsed = urllib3.util.parse_url(prepared)
        readings = [
            origin_of(prepared),
            _loose(split.scheme, split.hostname or "", split.port),
            _loose(parsed.scheme or "", parsed.host or "", parsed.port),
        ]
    except (OriginError, ValueError):  # urllib3's LocationParseError is a ValueError
        raise OriginError("the URL as requests sends it cannot be read unambiguously") from None
    if any(reading != origin for reading in readings):
        raise OriginError("URL readers disagree about its origin")
    return prepared, origin


def callback_refusal(callback_url: str, webapp_url: str, allowed_hosts: Sequence[str]) -> str | None:
    """Why results of a job may not go to its callback URL, or ``None`` when they may."""
    try:
        own = base_origin(webapp_url)
        allowed = allowed_callback_origins(webapp_url, allowed_hosts)
    except OriginError as exc:
        return f"callback refused: the allowed origins cannot be read ({exc})"
    try:
        origin = sent_origin(callback_url)
    except OriginError as exc:
        return f"callback refused: {exc}"
    if origin in allowed:
        return None
    return (
        f"callback origin {origin} is not the cloud's host ({own}) and not listed in allowed_callback_hosts"
    )


def callback_allowed(callback_url: str, webapp_url: str, allowed_hosts: Sequence[str]) -> bool:
    """Results go only to the cloud's own origin, unless the site allows more."""
    return callback_refusal(callback_url, webapp_url, allowed_hosts) is None
