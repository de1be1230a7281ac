"""origins: which URLs results and JWTs may go to, read the way requests reads them.

Table-driven: each class of hostile URL has several cases, and each case
names the reason it must be refused for.  The rule: scheme, host and port
equal to webapp_url's or to an origin the operator listed; anything two URL
readers could read apart is refused outright.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests

from coda_bridge.cloud.origins import (
    Origin,
    OriginError,
    allowed_callback_origins,
    base_origin,
    callback_allowed,
    callback_refusal,
    origin_entry,
    origin_of,
    sent_origin,
    sent_url,
)
from coda_bridge.errors import CodaError, ConfigError
from coda_bridge.settings import load_settings

CLOUD = "https://cloud.example"
ALLOWED = ["results.example", "http://127.0.0.1:8080"]

#: URLs read unambiguously, and the origin each one has.
ACCEPTED = [
    ("https://cloud.example/cb", Origin("https", "cloud.example", 443)),
    ("https://cloud.example", Origin("https", "cloud.example", 443)),
    ("HTTPS://CLOUD.EXAMPLE/cb", Origin("https", "cloud.example", 443)),
    ("https://cloud.example:443/cb", Origin("https", "cloud.example", 443)),
    ("https://Cloud.Example/api/jobs/j-1/result?x=%20y&b=c", Origin("https", "cloud.example", 443)),
    ("https://cloud.example/a/@b:c/%2e%2e", Origin("https", "cloud.example", 443)),
    ("https://cloud.example?@evil.example/", Origin("https", "cloud.example", 443)),
    ("http://127.0.0.1:8080/cb", Origin("http", "127.0.0.1", 8080)),
    ("http://localhost/cb", Origin("http", "localhost", 80)),
    ("https://xn--bcher-kva.example/", Origin("https", "xn--bcher-kva.example", 443)),
    ("https://coda_cloud:3000/", Origin("https", "coda_cloud", 3000)),
    ("https://[::1]:8443/", Origin("https", "[::1]", 8443)),
    ("https://[0:0::1]/", Origin("https", "[::1]", 443)),
]


@pytest.mark.parametrize(("url", "origin"), ACCEPTED)
def test_an_unambiguous_url_has_one_origin_for_every_reader(url: str, origin: Origin) -> None:
    # when the URL is read strictly and as requests will send it
    # then both give the same lower-cased origin with its default port
    assert origin_of(url) == origin
    assert sent_origin(url) == origin


@pytest.mark.parametrize(("url", "origin"), ACCEPTED)
def test_the_sent_url_is_what_requests_prepares_and_keeps_its_origin(url: str, origin: Origin) -> None:
    # when the URL is checked
    sent, checked = sent_url(url)

    # then the URL returned is requests' own preparation of it, and reads to the same origin
    assert sent == requests.Request("POST", url).prepare().url
    assert checked == origin == sent_origin(sent)


#: URLs two readers could read apart, by class, with the reason each is refused for.
AMBIGUOUS = [
    # backslashes: urlsplit and requests split the authority at different places
    ("https://evil.example\\@cloud.example/", "backslash"),
    ("https://cloud.example\\@evil.example/", "backslash"),
    ("https://evil.example\\.cloud.example/", "backslash"),
    ("https://cloud.example/\\evil", "backslash"),
    # whitespace and control characters: stripped by one reader, escaped into the host by another
    ("https://cloud.exa\tmple/", "whitespace"),
    ("https://cloud.example\t@evil.example/", "whitespace"),
    ("https://cloud.example\n/", "whitespace"),
    (" https://cloud.example/", "whitespace"),
    ("https://cloud.example /", "whitespace"),
    ("\x00https://cloud.example/", "control"),
    ("https://cloud.example\x00.evil.example/", "control"),
    ("https://cloud.example\x7f/", "control"),
    # non-ASCII: IDNA mappings fold look-alikes (fullwidth letters, ideographic dots)
    ("https://\uff45vil.example/", "non-ASCII"),
    ("https://cloud\u3002example/", "non-ASCII"),
    ("https://cloud\uff0eexample/", "non-ASCII"),
    ("https://evil.example\uff0f@cloud.example/", "non-ASCII"),
    ("https://b\u00fccher.example/", "non-ASCII"),
    ("https://cloud.example:\uff14\uff14\uff13/", "non-ASCII"),
    # userinfo: requests turns it into Basic auth in place of the bearer, and it hides the host
    ("https://cloud.example@evil.example/", "userinfo"),
    ("https://cloud.example:443@evil.example/", "userinfo"),
    ("https://user:pass@cloud.example/", "userinfo"),
    ("https://evil.example%5C@cloud.example/", "userinfo"),
    ("https://@cloud.example/", "userinfo"),
    # percent escapes in the host: requests decodes them (%63loud is cloud)
    ("https://%63loud.example/", "percent"),
    ("https://evil%2Eexample/", "percent"),
    ("https://[fe80::1%25eth0]/", "percent"),
    # fragments
    ("https://evil.example#@cloud.example/", "fragment"),
    ("https://cloud.example/cb#frag", "fragment"),
    # ports
    ("https://cloud.example:/cb", "port"),
    ("https://cloud.example:0443/", "port"),
    ("https://cloud.example:0/", "port"),
    ("https://cloud.example:65536/", "port"),
    ("https://cloud.example:99999/", "port"),
    ("https://cloud.example:+443/", "port"),
    ("https://cloud.example:443:80/", "port"),
    # numeric hosts that getaddrinfo reads as IPv4 (all of these reach 127.0.0.x)
    ("http://2130706434/", "numeric"),
    ("http://127.2/", "numeric"),
    ("http://0x7f.1/", "numeric"),
    ("http://0x7f000002/", "numeric"),
    ("http://127.0.0.02/", "numeric"),
    ("http://1.2.3.4.5/", "numeric"),
    # IPv6 forms
    ("https://[::ffff:127.0.0.2]/", "IPv4-mapped"),
    ("https://[::1/", "IPv6"),
    ("https://[zz::1]/", "IPv6"),
    ("https://[::1]x/", "IPv6"),
    # not a DNS name
    ("https://cloud.example./", "dot"),
    ("https://*.cloud.example/", "DNS name"),
    ("https://.cloud.example/", "DNS name"),
    ("https://cloud..example/", "DNS name"),
    ("https://-cloud.example/", "DNS name"),
    ("https://" + "a" * 64 + ".example/", "DNS name"),
    # not scheme://host
    ("https:///cloud.example/", "no host"),
    ("https:/cloud.example/", "form"),
    ("https:cloud.example/", "form"),
    ("//cloud.example/", "form"),
    ("cloud.example/cb", "form"),
    ("ftp://cloud.example/", "scheme"),
    ("javascript://cloud.example/", "scheme"),
    ("", "empty"),
    ("https://cloud.example/" + "a" * 3000, "longer than"),
]


@pytest.mark.parametrize(("url", "reason"), AMBIGUOUS)
def test_an_ambiguous_url_is_refused_naming_why(url: str, reason: str) -> None:
    # when the URL is read, strictly or as requests sends it
    # then it is refused, for the reason of its class
    with pytest.raises(OriginError, match=reason):
        origin_of(url)
    with pytest.raises(OriginError, match=reason):
        sent_origin(url)


@pytest.mark.parametrize(("url", "reason"), AMBIGUOUS)
def test_an_ambiguous_callback_is_refused_even_when_urlsplit_sees_the_cloud(url: str, reason: str) -> None:
    # given the cloud's own origin as the only allowed one
    # when a job names the URL as its callback
    refusal = callback_refusal(url, CLOUD, [])

    # then the results may not go there
    assert refusal is not None and refusal.startswith("callback refused: ")
    assert callback_allowed(url, CLOUD, []) is False


def test_the_bypass_of_the_old_check_is_closed() -> None:
    # given the URL that passed the host-only check while requests connected elsewhere
    url = "http://127.0.0.2:9001\\@127.0.0.1:9000/cb"
    assert urlsplit(url).hostname == "127.0.0.1"

    # when it is checked against a cloud on 127.0.0.1:9000
    # then it is refused
    assert callback_refusal(url, "http://127.0.0.1:9000", []) == "callback refused: URL has a backslash"


#: Well-formed callbacks on another origin than the cloud's or an allowed one.
OTHER_ORIGINS = [
    "https://evil.example/cb",
    "http://cloud.example/cb",  # http where the cloud is https
    "https://cloud.example:8443/cb",  # another port
    "https://cloud.example:80/cb",
    "https://sub.cloud.example/cb",
    "https://cloud.example.evil.example/cb",
    "https://evilcloud.example/cb",
    "http://results.example/cb",  # a bare allowed host means https only
    "https://results.example:8443/cb",  # ... and port 443 only
    "http://127.0.0.1:8081/",
    "https://127.0.0.1:8080/",  # https where the allowed origin is http
    "http://localhost:8080/",  # another name for an allowed address is another origin
    "http://[::1]:8080/",
]


@pytest.mark.parametrize("url", OTHER_ORIGINS)
def test_a_callback_on_another_origin_is_refused_naming_both_origins(url: str) -> None:
    # when a job names the URL as its callback
    refusal = callback_refusal(url, CLOUD, ALLOWED)

    # then it is refused; the message shows the origins but not the URL's path
    assert refusal is not None
    assert "is not the cloud's host (https://cloud.example:443)" in refusal
    assert str(origin_of(url)) in refusal
    assert "/cb" not in refusal


@pytest.mark.parametrize(
    "url",
    [
        "https://cloud.example/api/internal/qpu/webhook/j-1",
        "https://CLOUD.example:443/x?y=1",
        "https://results.example/cb",
        "https://Results.Example:443/cb",
        "http://127.0.0.1:8080/anything",
    ],
)
def test_a_callback_on_the_clouds_or_an_allowed_origin_passes(url: str) -> None:
    assert callback_refusal(url, CLOUD, ALLOWED) is None
    assert callback_allowed(url, CLOUD, ALLOWED) is True


def test_a_refusal_never_repeats_secrets_in_the_url() -> None:
    # given callbacks carrying credentials in their userinfo, path or query
    urls = [
        "https://node:s3cr3t-pass@cloud.example/cb",
        "https://evil.example/cb?token=s3cr3t-pass",
        "https://evil.example/s3cr3t-pass/cb",
    ]

    # when they are checked
    refusals = [callback_refusal(url, CLOUD, []) for url in urls]

    # then each is refused without the secret
    assert all(r is not None and "s3cr3t" not in r for r in refusals)


# -- allow-list entries --


@pytest.mark.parametrize(
    ("entry", "origin"),
    [
        ("results.example", Origin("https", "results.example", 443)),
        ("Results.Example", Origin("https", "results.example", 443)),
        ("results.example:8443", Origin("https", "results.example", 8443)),
        ("https://results.example", Origin("https", "results.example", 443)),
        ("https://results.example/", Origin("https", "results.example", 443)),
        ("http://127.0.0.1:8080", Origin("http", "127.0.0.1", 8080)),
        ("HTTP://LOCALHOST", Origin("http", "localhost", 80)),
    ],
)
def test_an_allow_list_entry_is_a_bare_host_for_https_or_an_origin(entry: str, origin: Origin) -> None:
    assert origin_entry(entry) == origin


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("evil\\@results.example", "backslash"),
        ("user@results.example", "userinfo"),
        ("https://results.example/cb", "path"),
        ("results.example/cb", "path"),
        ("https://results.example?x", "path or query"),
        ("ftp://results.example", "scheme"),
        ("results.example.", "dot"),
        (" results.example", "whitespace"),
        ("*.example", "DNS name"),
        ("", "no host"),
    ],
)
def test_a_bad_allow_list_entry_is_refused(entry: str, reason: str) -> None:
    with pytest.raises(OriginError, match=reason):
        origin_entry(entry)


def test_the_allowed_callback_origins_are_the_clouds_and_the_listed_ones() -> None:
    assert allowed_callback_origins(CLOUD + "/base/path", ALLOWED) == {
        Origin("https", "cloud.example", 443),
        Origin("https", "results.example", 443),
        Origin("http", "127.0.0.1", 8080),
    }


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://cloud.example/?x=1", "query"),
        ("https://cloud.example\\@evil/", "backslash"),
        ("cloud", "form"),
    ],
)
def test_a_base_url_is_an_origin_and_a_path_only(url: str, reason: str) -> None:
    with pytest.raises(OriginError, match=reason):
        base_origin(url)


def test_an_origin_error_is_a_coda_error() -> None:
    assert issubclass(OriginError, CodaError)


# -- the settings that feed the rule (PROTOCOL.md 8: CODA_WEBAPP_URL keeps working) --


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("results.example", ["results.example"]),
        ("results.example, other.example", ["results.example", "other.example"]),
        ('["results.example", "http://127.0.0.1:8080"]', ["results.example", "http://127.0.0.1:8080"]),
        ("http://127.0.0.1:8080", ["http://127.0.0.1:8080"]),
    ],
)
def test_allowed_callback_hosts_takes_hosts_and_origins_from_the_environment(
    clean_env: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    # given the variable in one of its forms
    clean_env.setenv("CODA_ALLOWED_CALLBACK_HOSTS", value)
    clean_env.setenv("CODA_ALLOWED_CLOUD_ORIGINS", value)

    # when the settings load
    settings = load_settings()

    # then every entry is kept as written
    assert settings.allowed_callback_hosts == expected
    assert settings.allowed_cloud_origins == expected


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CODA_ALLOWED_CALLBACK_HOSTS", "results.example,evil\\@x"),
        ("CODA_ALLOWED_CALLBACK_HOSTS", "https://results.example/cb"),
        ("CODA_ALLOWED_CLOUD_ORIGINS", "user@cloud.example"),
        ("CODA_WEBAPP_URL", "http://127.0.0.2:9\\@127.0.0.1:9"),
        ("CODA_WEBAPP_URL", "cloud.example"),
        ("CODA_WEBAPP_URL", "https://cloud.example/?x=1"),
    ],
)
def test_a_setting_that_cannot_be_read_unambiguously_is_a_config_error_naming_it(
    clean_env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # given a variable that is not an origin (or base URL)
    clean_env.setenv(variable, value)

    # when the settings load
    # then they fail, naming the variable
    with pytest.raises(ConfigError, match=variable):
        load_settings()
