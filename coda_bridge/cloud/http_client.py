"""HTTP client for the Coda cloud: connect, heartbeat and result delivery.

One pooled :class:`requests.Session` per process, explicit timeouts, and
every transport or HTTP failure turned into one of our errors carrying the
cloud's own message, never a bearer value.

Each request is prepared first and its prepared URL checked: connect and
heartbeat go only to ``webapp_url``'s origin, results only to an origin
:mod:`.origins` allows.  Redirects are never followed (a 3xx is a failed
attempt, named with its Location), and the bearer is set as the request's
auth, so neither ``.netrc`` nor userinfo in a URL can replace it.  The
operator's ``node_connect_headers`` go with every request to ``webapp_url``'s
origin (as the first runtime sends them: a protected staging cloud refuses
requests without its bypass header), and with none to any other origin.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from ..errors import ClockRefused, HeartbeatRejected, NodeError, WebhookError
from ..logs import mask
from ..settings import Settings
from .clock import CloudClock
from .origins import Origin, OriginError, allowed_callback_origins, base_origin, origin_of, sent_origin
from .reachability import Reachability
from .signing import Signer

__all__ = [
    "CallbackRefused",
    "CloudClient",
    "WebhookRedirected",
    "cloud_message",
    "connect_headers",
    "connect_headers_for",
    "redirect_target",
]

logger = logging.getLogger(__name__)

#: First pause between connect attempts; doubles after each failure.
CONNECT_BACKOFF_BASE_SEC = 1.0
#: How much of a non-JSON answer is quoted in an error.
EXCERPT_CHARS = 120
#: Connections kept per host in the pool (webhook threads share it).
POOL_SIZE = 32
#: How much of a redirect's Location is quoted in an error, in characters.
LOCATION_CHARS = 200

#: Why a connect or heartbeat URL is not sent.
NOT_OWN = "is not webapp_url's origin"
#: Why a callback URL is not posted to.
NOT_ALLOWED_CALLBACK = "is not the cloud's host and not listed in allowed_callback_hosts"

#: A refusal of the node's JWT that names its time claims: the clock, not the key (retried, not final).
_CLOCK_REASON = re.compile(r"\b(iat|nbf|exp)\b|not yet valid|expired|clock", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]+")


class CallbackRefused(WebhookError):
    """The callback URL is not one results may go to: nothing was sent, and another attempt will not be."""

    @property
    def retryable(self) -> bool:
        return False


class WebhookRedirected(WebhookError):
    """The callback answered with a redirect, which is never followed: a failed attempt, worth another."""

    @property
    def retryable(self) -> bool:
        return True


class _Bearer(AuthBase):
    """The bearer as the request's auth: set last, so ``.netrc`` or URL userinfo cannot replace it."""

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:
        return "_Bearer([secret])"


def redirect_target(response: requests.Response) -> str:
    """A 3xx answer's Location, masked, printable and short, for a message."""
    location = _UNPRINTABLE.sub("?", mask(response.headers.get("Location") or ""))
    if not location:
        return "no Location"
    shown = location if len(location) <= LOCATION_CHARS else location[: LOCATION_CHARS - 3] + "..."
    return f"Location {shown}"


def _is_redirect(response: requests.Response) -> bool:
    # response.ok is True for a 3xx, and it is no answer from the cloud
    return 300 <= response.status_code < 400


def _is_success(response: requests.Response) -> bool:
    return 200 <= response.status_code < 300


def _sent_bearer(response: requests.Response) -> str | None:
    """The bearer value the request carried (a one-time token is opaque: no pattern would find it)."""
    request = getattr(response, "request", None)
    header = str(request.headers.get("Authorization") or "") if request is not None else ""
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and len(value.strip()) >= 8 else None


def connect_headers(settings: Settings) -> dict[str, str]:
    """The operator's ``node_connect_headers``, for requests to the cloud's own origin only.

    One named ``Authorization`` (in any case) is left out: the node's bearer always wins.
    """
    return {k: v for k, v in settings.node_connect_headers.items() if k.lower() != "authorization"}


def connect_headers_for(settings: Settings, url: str) -> dict[str, str]:
    """:func:`connect_headers` when ``url`` goes to ``webapp_url``'s own origin, else none: secrets."""
    try:
        own = sent_origin(url) == base_origin(settings.webapp_url)
    except OriginError:
        return {}
    return connect_headers(settings) if own else {}


def cloud_message(response: requests.Response) -> str:
    """The cloud's own explanation: its ``error`` (or ``detail``) field, else a short text excerpt.

    Whatever the cloud quotes back of the bearer it was sent is removed first.
    """
    bearer = _sent_bearer(response)

    def clean(text: str) -> str:
        masked = mask(text)
        return masked.replace(bearer, "[secret]") if bearer else masked

    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for field in ("error", "detail", "message"):
            if isinstance(body.get(field), str):
                return clean(str(body[field]))[:500]
    text = clean(_SPACE.sub(" ", _TAGS.sub(" ", response.text or "")).strip())
    if not text:
        return "(empty body)"
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


class CloudClient:
    """Talks to ``webapp_url`` with pooled connections; thread-safe for concurrent posts.

    Every answer's ``Date`` goes to ``clock`` (the cloud clock's offset), and
    every outcome to ``reachability`` (whether the cloud's API answers).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: CloudClock | None = None,
        reachability: Reachability | None = None,
    ) -> None:
        self.settings = settings
        self._sleep = sleep
        self.clock = clock or CloudClock()
        self.reachability = reachability or Reachability()
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "coda-bridge"
        # Proxy look-ups from the environment cost a third of each request; opt in.  An operator's
        # HTTPS_PROXY, NO_PROXY and CA bundle then work as requests reads them; .netrc never
        # applies, because every request carries its bearer as auth (see _Bearer).
        self.session.trust_env = settings.use_env_proxies

    def close(self) -> None:
        self.session.close()

    def _post(
        self,
        url: str,
        body: Mapping[str, Any],
        *,
        bearer: str,
        allowed: frozenset[Origin],
        refused: str,
        timeout_sec: float,
        headers: Mapping[str, str] | None = None,
        node_api: bool = False,
    ) -> tuple[requests.Response, Origin]:
        """POST exactly the prepared request whose URL was checked, redirects off.

        ``node_api`` (connect, heartbeat): a failure alone reads as the API down
        (see :class:`~.reachability.Reachability`).

        Raises :class:`OriginError` before any connection when the prepared
        URL cannot be read unambiguously or its origin is not in ``allowed``
        (the message then says ``refused``); requests' own errors pass through.
        """
        origin = sent_origin(url)
        if origin not in allowed:
            raise OriginError(f"origin {origin} {refused}")
        session = self.session
        # Prepared here rather than by session.prepare_request, whose merging of settings the node never
        # sets costs a fifth of a delivery's CPU; the session's headers and cookies still go.
        prepared = requests.PreparedRequest()
        prepared.prepare(
            method="POST",
            url=url,
            headers={**session.headers, **(headers or {})},
            json=dict(body),
            auth=_Bearer(bearer),
            cookies=session.cookies,
        )
        if not isinstance(prepared.url, str) or origin_of(prepared.url) != origin:
            raise OriginError("the prepared URL is not the one checked")  # what is sent is what was checked
        options: dict[str, Any] = {
            "proxies": session.proxies,
            "verify": session.verify,
            "cert": session.cert,
            "stream": False,
        }
        if session.trust_env:
            options = dict(session.merge_environment_settings(prepared.url, {}, None, None, None))
        sent_at = self.clock.local()
        try:
            response = session.send(prepared, timeout=timeout_sec, allow_redirects=False, **options)
        except requests.RequestException as exc:
            self.reachability.failed(f"{type(exc).__name__} from {origin}", node_api=node_api)
            raise
        self.clock.observe(response.headers.get("Date"), sent_at, self.clock.local())
        if response.status_code >= 500:
            self.reachability.failed(f"{response.status_code} from {origin}", node_api=node_api)
        else:
            self.reachability.answered()
        return response, origin

    def _own_origin(self) -> frozenset[Origin]:
        """``webapp_url``'s origin, the only one connect and heartbeat requests go to."""
        try:
            return frozenset({base_origin(self.settings.webapp_url)})
        except OriginError as exc:
            raise NodeError(f"webapp_url cannot be used: {exc}") from None

    # -- connect (PROTOCOL.md 1.1) --

    def connect(self, bearer: str | Callable[[], str], body: Mapping[str, Any]) -> dict[str, Any]:
        """POST the connect request; retry 5xx and transport errors with backoff; 4xx fails at once.

        ``bearer`` is a token, or what signs one for each attempt: a JWT refused
        for its time claims (:class:`ClockRefused`) is signed again on the
        cloud's time, which the refusal's ``Date`` told, and retried.
        """
        settings = self.settings
        url = settings.url(settings.connect_path)
        own = self._own_origin()
        headers = connect_headers(settings)  # only to webapp_url's origin, which _post checks
        attempts = settings.node_connect_retries
        for attempt in range(1, attempts + 1):
            try:
                response, _ = self._post(
                    url,
                    body,
                    bearer=bearer() if callable(bearer) else bearer,
                    allowed=own,
                    refused=NOT_OWN,
                    timeout_sec=settings.node_timeout_sec,
                    headers=headers,
                    node_api=True,
                )
            except OriginError as exc:
                raise NodeError(f"connect not sent: {exc}") from None
            except requests.RequestException as exc:
                error = NodeError(f"cannot reach the cloud at {url}: {type(exc).__name__}")
            else:
                status = response.status_code
                if _is_success(response):
                    return self._bundle(response, url)
                if _is_redirect(response):
                    target = redirect_target(response)
                    error = NodeError(
                        f"cloud answered connect with {status} ({target}); redirects are not followed",
                        status=status,
                    )
                else:
                    message = cloud_message(response)
                    error = NodeError(f"cloud refused connect ({status}): {message}", status=status)
                    if callable(bearer) and status == 401 and _CLOCK_REASON.search(message):
                        error = ClockRefused(
                            f"cloud refused connect ({status}) for the token's time: {message}; "
                            f"{self.clock.describe()}",
                            status=status,
                        )
                    elif status < 500:
                        raise error
            if attempt < attempts:
                delay = CONNECT_BACKOFF_BASE_SEC * 2 ** (attempt - 1)
                logger.warning(
                    "Connect attempt %d/%d failed (%s); retrying in %.0f s.", attempt, attempts, error, delay
                )
                self._sleep(delay)
        raise type(error)(f"{error} (gave up after {attempts} attempts)", status=error.status)

    @staticmethod
    def _bundle(response: requests.Response, url: str) -> dict[str, Any]:
        try:
            bundle = response.json()
        except ValueError:
            raise NodeError(
                f"cloud answered {response.status_code} at {url} with a body that is not JSON: "
                f"{cloud_message(response)}",
                status=response.status_code,
            ) from None
        if not isinstance(bundle, dict):
            raise NodeError(
                f"cloud answered {url} with JSON that is not an object", status=response.status_code
            )
        return bundle

    # -- heartbeat (PROTOCOL.md 3) --

    def heartbeat(self, signer: Signer, body: Mapping[str, Any]) -> None:
        """POST one heartbeat; :class:`HeartbeatRejected` on non-2xx, :class:`NodeError` on transport."""
        url = self.settings.url(self.settings.heartbeat_path)
        try:
            response, _ = self._post(
                url,
                body,
                bearer=signer.sign(),
                allowed=self._own_origin(),
                refused=NOT_OWN,
                timeout_sec=self.settings.node_timeout_sec,
                headers=connect_headers(self.settings),
                node_api=True,
            )
        except OriginError as exc:
            raise NodeError(f"heartbeat not sent: {exc}") from None
        except requests.RequestException as exc:
            raise NodeError(f"heartbeat to {url} failed: {type(exc).__name__}") from None
        if _is_redirect(response):
            raise HeartbeatRejected(
                f"cloud answered heartbeat with {response.status_code} ({redirect_target(response)}); "
                "redirects are not followed",
                status=response.status_code,
            )
        if not _is_success(response):
            raise HeartbeatRejected(
                f"cloud rejected heartbeat ({response.status_code}): {cloud_message(response)}",
                status=response.status_code,
            )

    # -- results (PROTOCOL.md 5) --

    def deliver(self, url: str, signer: Signer, payload: Mapping[str, Any]) -> int:
        """POST one result with a fresh JWT; the cloud's HTTP status, or :class:`WebhookError` (retry?).

        The URL must be on an origin :func:`.origins.allowed_callback_origins`
        allows (else :class:`CallbackRefused`, before any connection); a 3xx
        is :class:`WebhookRedirected`, and its Location is not followed.  The
        connect headers go only when the URL is on ``webapp_url``'s own origin,
        never to another origin ``allowed_callback_hosts`` lists.
        """
        settings = self.settings
        try:
            allowed = allowed_callback_origins(settings.webapp_url, settings.allowed_callback_hosts)
            own = base_origin(settings.webapp_url)
            response, origin = self._post(
                url,
                payload,
                bearer=signer.sign(),
                allowed=allowed,
                refused=NOT_ALLOWED_CALLBACK,
                timeout_sec=settings.webhook_timeout_sec,
                headers=connect_headers(settings) if sent_origin(url) == own else None,
            )
        except OriginError as exc:
            raise CallbackRefused(f"result not posted: {exc}") from None
        except requests.RequestException as exc:
            raise WebhookError(f"webhook to {url} failed: {type(exc).__name__}") from None
        if _is_redirect(response):
            raise WebhookRedirected(
                f"webhook at {origin} answered {response.status_code} ({redirect_target(response)}); "
                "redirects are not followed",
                status=response.status_code,
            )
        if not _is_success(response):
            raise WebhookError(
                f"cloud answered webhook with {response.status_code}: {cloud_message(response)}",
                status=response.status_code,
            )
        return int(response.status_code)
