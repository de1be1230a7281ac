"""Whether the cloud's API answers, as this process's requests find it, kept in the node's shared state.

A connect or heartbeat that meets a transport error or a 5xx marks the API
down (``/ready`` says so), and so do :data:`DOWN_AFTER_FAILURES` failed
requests in a row of any kind; one job's webhook answered 5xx is that job's
retry, not an outage.  The next answer clears the mark and notes when the
cloud came back, which the results workers watch to send the deliveries
waiting on their backoff at once
(:class:`~coda_bridge.queueing.middleware.PromptAfterOutage`).  The marks are
bookkeeping: a broker that does not take them costs nothing else.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import redis

from ..state.node_state import NodeState

__all__ = ["Reachability"]

logger = logging.getLogger(__name__)

#: A process that has seen no failure clears the shared mark at most this often.
ANSWERED_CHECK_INTERVAL_SEC = 1.0
#: Failed requests in a row (webhooks included) in one process that mark the API down, in requests.
DOWN_AFTER_FAILURES = 3


class Reachability:
    """Reports each request's outcome; ``state`` ``None`` (before the node is known) reports nothing."""

    def __init__(self, state: NodeState | None = None) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._failed_here = False
        self._failures_in_row = 0
        self._checked_at = -math.inf

    def failed(self, error: str, *, node_api: bool = False) -> None:
        """A request found the API unreachable (transport error) or failing (5xx).

        ``node_api``: a connect or heartbeat, whose failure alone marks the API
        down; any other request's only after :data:`DOWN_AFTER_FAILURES` in a row.
        """
        if self.state is None:
            return
        with self._lock:
            self._failures_in_row += 1
            if not node_api and self._failures_in_row < DOWN_AFTER_FAILURES:
                return
            self._failed_here = True
        try:
            self.state.cloud_unreachable(error)
        except redis.RedisError as exc:
            logger.debug("Cloud API state not recorded (%s).", exc)

    def answered(self) -> None:
        """The API answered: clear the down mark (at once after a failure here, else once a second)."""
        if self.state is None:
            return
        now = time.monotonic()
        with self._lock:
            self._failures_in_row = 0
            due = self._failed_here or now - self._checked_at >= ANSWERED_CHECK_INTERVAL_SEC
            if not due:
                return
            self._failed_here, self._checked_at = False, now
        try:
            if self.state.cloud_answered():
                logger.info("The cloud's API answers again; waiting results go out now.")
        except redis.RedisError as exc:
            logger.debug("Cloud API state not recorded (%s).", exc)
