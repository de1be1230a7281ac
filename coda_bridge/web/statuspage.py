"""The status page: the node's state on one HTML page, for a person with a browser (a phone too).

Served by the probes app at ``/status`` (behind the dashboard's
authentication rules, :mod:`coda_bridge.web.probes_app`).  Everything comes from
the broker Redis, the cloud's Redis and ``/ready``'s own check when the page
is asked for, so any gunicorn worker shows the same.  The page refreshes
itself (a meta refresh: no script), and Jinja escapes every value: a pause
note is operator text.  No secret is read, so none can be shown.
:class:`PauseBanner` puts the pause on the dramatiq dashboard's pages too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from flask import Flask, render_template
from markupsafe import escape

from ..cloud.redis_keys import group_name, stream_key
from ..control.pause_book import PauseBook
from ..control.windows import active_window, next_window, parse_window
from ..queueing.queues import QUEUES
from ..queueing.redis_broker import create_broker
from ..replies import as_text
from ..settings import Settings
from ..state.node_state import NodeState, utc_iso
from ..state.registry import live_processes
from ..version import __version__

__all__ = ["STATUS_PREFIX", "STATUS_REFRESH_SEC", "PauseBanner", "node_view", "status_app"]

#: Where the probes app serves the page.
STATUS_PREFIX = "/status"
#: The page reloads itself this often.
STATUS_REFRESH_SEC = 5
#: What a section says when the broker Redis does not answer.
UNKNOWN = "unknown: the local broker Redis does not answer"


def _when(ts: float | None, now: float) -> dict[str, Any] | None:
    """A moment as UTC text and its distance from now in whole seconds (positive: in the past)."""
    if ts is None:
        return None
    return {"utc": utc_iso(ts), "ago_sec": round(now - ts)}


def _windows(texts: Iterable[str], now: float) -> dict[str, Any]:
    """The maintenance window in force and the next one (the settings validated every text)."""
    windows = [parse_window(text) for text in texts]
    active, upcoming = active_window(windows, now), next_window(windows, now)
    return {
        "configured": [window.text for window in windows],
        "active": {"text": active.window.text, "until": utc_iso(active.end)} if active else None,
        "next": {"text": upcoming.window.text, "from": utc_iso(upcoming.start)} if upcoming else None,
    }


def _stream(cloud: redis.Redis, qpu_id: str) -> dict[str, Any]:
    """The node's consumer group on the cloud's job stream: entries read and not yet acknowledged."""
    try:
        pending: Any = cloud.xpending(stream_key(qpu_id), group_name(qpu_id))
    except redis.ResponseError:  # no stream or no group yet: the bridge creates them
        return {"pending": None, "problem": "no consumer group yet (the bridge creates it)"}
    except redis.RedisError:
        return {"pending": None, "problem": "the cloud's Redis does not answer"}
    oldest = as_text(pending.get("min")) if pending.get("min") else None
    return {"pending": int(pending.get("pending") or 0), "oldest": oldest, "problem": None}


def node_view(
    settings: Settings, state: NodeState, cloud: redis.Redis, broker: Any, ready: dict[str, Any]
) -> dict[str, Any]:
    """Everything the page shows; ``ready`` is the ``/ready`` body, so the page tells the same truth."""
    now = time.time()
    view: dict[str, Any] = {
        "qpu": {"id": state.qpu_id, "display_name": settings.qpu_display_name, "version": __version__},
        "now": utc_iso(now),
        "refresh_sec": STATUS_REFRESH_SEC,
        "ready": ready,
        "windows": _windows(settings.maintenance_windows, now),
        "stream": _stream(cloud, state.qpu_id),
        "broker": None,
    }
    try:
        sizes = broker.queue_sizes()
        hold = PauseBook(state.client, state.qpu_id).hold()
        heartbeat = state.last_heartbeat_accepted()
        clock = state.clock_offset()
        view.update(
            pause=hold.pause.as_dict() if hold.pause is not None else None,
            device_state=hold.device.value if hold.device is not None else None,
            current_jobs=state.current_jobs(),
            last_job_at=state.last_job_at(),
            queues={queue: sizes.get(queue, 0) for queue in QUEUES},
            dead_letters={queue: sizes.get(f"{queue}.dead", 0) for queue in QUEUES},
            heartbeat=_when(heartbeat, now),
            clock={"offset_sec": round(clock[0], 1), "measured": _when(clock[1], now)} if clock else None,
            cloud_down=_cloud_down(state.cloud_down(), now),
            processes=[
                {
                    "role": info.role,
                    "host": info.host,
                    "pid": info.pid,
                    "version": info.version,
                    "since": utc_iso(info.since),
                }
                for info in live_processes(state.client, state.qpu_id)
            ],
        )
    except redis.RedisError:
        view["broker"] = UNKNOWN
    return view


def _cloud_down(down: tuple[float, str] | None, now: float) -> dict[str, Any] | None:
    if down is None:
        return None
    since, error = down
    return {"since": _when(since, now), "error": error}


def status_app(
    settings: Settings, state: NodeState, cloud: redis.Redis, ready: Callable[[], dict[str, Any]]
) -> Flask:
    """A WSGI app serving the page at its root (the probes app mounts it at :data:`STATUS_PREFIX`)."""
    page = Flask(__name__)  # its templates are the package's web/templates
    broker = create_broker(settings)

    @page.get("/")
    def status() -> str:
        return render_template("status.html", **node_view(settings, state, cloud, broker, ready()))

    return page


class PauseBanner:
    """WSGI middleware: a one-line banner with the pause (its note and end) at the top of each HTML page."""

    def __init__(self, app: Any, book: PauseBook) -> None:
        self.app = app
        self.book = book

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        captured: dict[str, Any] = {}
        written: list[bytes] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured.update(status=status, headers=headers, exc_info=exc_info)
            return written.append  # the legacy write(): kept, in order, before the returned body

        chunks = self.app(environ, capture)
        try:
            body = b"".join([*written, *chunks])
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        headers = captured["headers"]
        html = any(k.lower() == "content-type" and v.startswith("text/html") for k, v in headers)
        banner = self._banner() if html else None
        if banner is not None and b"<body" in body:
            at = body.index(b">", body.index(b"<body")) + 1
            body = body[:at] + banner + body[at:]
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(captured["status"], headers, captured["exc_info"])
        return [body]

    def _banner(self) -> bytes | None:
        try:
            pause = self.book.current()
        except redis.RedisError:
            return None  # the dashboard says the broker does not answer itself
        if pause is None:
            return None
        text = escape(f"The node is {pause.describe()}; it takes no new job.")
        style = "background:#fde68a;color:#111;padding:.5em 1em;font:bold 1em sans-serif"
        return f'<div class="coda-pause-banner" style="{style}">{text}</div>'.encode()
