"""The order a node drains in, as data, and the one look that tells its results were picked up.

Both ``start`` modes follow :data:`DRAIN_PLAN`: the process group of
``start`` (:mod:`~coda_bridge.ops.group`) signals its processes stage by
stage, ``start --one-process`` (:mod:`~coda_bridge.ops.oneprocess`) stops
its threads stage by stage.  A stage that waits for the results to be
flushed starts once :class:`ResultsFlushed` says so, or at the drain
deadline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..identity.credentials import StatePaths, read_private
from ..queueing.queues import RESULTS_QUEUE
from ..state.broker_keys import broker_namespace, key_part, queue_key

if TYPE_CHECKING:  # the supervisor's interpreter imports redis only once it drains
    import redis

__all__ = ["DRAIN_PLAN", "QPU_SLOT", "DrainStage", "ResultsFlushed", "drain_stage", "results_key_template"]

#: Socket timeouts of the results-queue look-up during a drain.
FLUSH_CHECK_TIMEOUT_SEC = 1.0
#: Stands for the QPU id in the results queue's key (a first start learns the QPU while it runs).
QPU_SLOT = "\0"


@dataclass(frozen=True)
class DrainStage:
    """Parts stopped together; ``after_results_flushed``: not before no result waits for delivery.

    ``parts`` empty: every part no earlier stage names.
    """

    parts: tuple[str, ...]
    after_results_flushed: bool = False


#: First no new jobs come in and the jobs in flight finish; then, once their results are picked up
#: for delivery, the delivery, control and probe parts stop.  Bounded by ``shutdown_drain_timeout_sec``.
DRAIN_PLAN = (
    DrainStage(("bridge", "jobs")),
    DrainStage((), after_results_flushed=True),
)


def drain_stage(part: str, plan: tuple[DrainStage, ...] = DRAIN_PLAN) -> int:
    """The index of the stage that stops ``part`` (``results.2`` is a ``results`` part)."""
    kind = part.split(".", 1)[0]
    for index, stage in enumerate(plan):
        if not stage.parts or kind in stage.parts:
            return index
    return len(plan) - 1


def results_key_template() -> str:
    """The results queue's key in the broker, with :data:`QPU_SLOT` for the QPU id (escaped as a key part)."""
    return queue_key(broker_namespace(QPU_SLOT), RESULTS_QUEUE).replace(key_part(QPU_SLOT), QPU_SLOT)


class ResultsFlushed:
    """Whether no result waits for a delivery worker: the results queue is empty in the broker.

    The QPU comes from the settings or, on a first start, from the identity
    the bridge persisted in ``state_dir``.  A look that fails answers True:
    a broken check must never hold up a stop.
    """

    def __init__(
        self,
        key_template: str,
        qpu_id: str | None,
        *,
        broker_url: str | None = None,
        client: redis.Redis | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.key_template = key_template
        self.qpu_id = qpu_id
        self.broker_url = broker_url
        self.paths = StatePaths(state_dir) if state_dir is not None else None
        self._client = client

    def _connect(self) -> redis.Redis | None:
        from ..queueing.broker_client import broker_client  # noqa: PLC0415 - start's group process loads it only to drain

        if not self.qpu_id and self.paths is not None:
            try:
                self.qpu_id = json.loads(read_private(self.paths.config) or "{}").get("qpu_id")
            except (ConfigError, ValueError):
                return None
        if self.qpu_id and self._client is None and self.broker_url:
            self._client = broker_client(
                self.broker_url,
                socket_timeout=FLUSH_CHECK_TIMEOUT_SEC,
                socket_connect_timeout=FLUSH_CHECK_TIMEOUT_SEC,
            )
        return self._client if self.qpu_id else None

    def __call__(self) -> bool:
        try:
            client = self._connect()
            if client is None:
                return True
            key = self.key_template.replace(QPU_SLOT, key_part(str(self.qpu_id)))
            return int(client.llen(key)) == 0
        except Exception:  # a broken look (Redis down, a bad URL) must never block the stop
            return True
