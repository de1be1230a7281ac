"""The actor options that come from the settings, set on the declared actors at process boot.

dramatiq reads an actor's options per message, so the limits and retry
policy from ``job_time_limit_sec``, ``webhook_*`` and the like are the
actors' own options once the node booted, never module constants computed
at import.
"""

from __future__ import annotations

from typing import Any

from coda_bridge.pipeline.delivery import should_retry
from coda_bridge.pipeline.runs import batch_time_limit_sec
from coda_bridge.queueing.queues import DELIVER_ACTOR, DELIVER_BATCH_ACTOR, EXECUTE_ACTOR, EXECUTE_BATCH_ACTOR
from coda_bridge.settings import Settings

__all__ = [
    "actor_options",
    "attempt_limit_ms",
    "backstop_limit_ms",
    "batch_attempt_limit_ms",
    "batch_backstop_limit_ms",
]

#: Above every run a job may get: a backstop's margin over the executor watch, in seconds.
BACKSTOP_MARGIN_SEC = 60
#: A job prepared ahead first waits for the runs of the jobs before it (the running one and the one prepared
#: before it, ``PREPARED_AHEAD`` in coda_bridge/ops/process_list.py): the backstop allows 3x the runs.
PREPARED_AHEAD_FACTOR = 3
#: One delivery attempt may take the HTTP timeout twice plus the status write, in seconds.
ATTEMPT_MARGIN_SEC = 30


def _run_sec(settings: Settings) -> float:
    return settings.job_time_limit_sec + settings.executor_stop_grace_sec


def backstop_limit_ms(settings: Settings) -> int:
    """dramatiq's time limit of a job, a backstop behind the executor watch (which fails the job cleanly):
    every run a job may get (one per executor crash), each with its stop grace, plus a minute; three
    times over, as a job prepared ahead first waits for the runs of the jobs before it."""
    runs_sec = _run_sec(settings) * settings.max_executor_crashes * PREPARED_AHEAD_FACTOR
    return int((runs_sec + BACKSTOP_MARGIN_SEC) * 1000)


def batch_backstop_limit_ms(settings: Settings) -> int:
    """A batch may run past the sum of its jobs' limits, then each job alone (after the batch before it)."""
    return int(
        (
            (
                batch_time_limit_sec(settings.job_time_limit_sec, settings.batch_size)
                + settings.executor_stop_grace_sec
                + _run_sec(settings) * settings.max_executor_crashes * settings.batch_size
            )
            * PREPARED_AHEAD_FACTOR
            + BACKSTOP_MARGIN_SEC
        )
        * 1000
    )


def attempt_limit_ms(settings: Settings) -> int:
    """One webhook delivery attempt's time limit."""
    return int((settings.webhook_timeout_sec * 2 + ATTEMPT_MARGIN_SEC) * 1000)


def batch_attempt_limit_ms(settings: Settings) -> int:
    """One attempt at each result of a batch: as many attempts one after the other as it has results
    (a backstop: they go out several at a time)."""
    return attempt_limit_ms(settings) * settings.batch_size


def actor_options(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per actor name, the options ``settings`` decide."""
    return {
        EXECUTE_ACTOR: {"time_limit": backstop_limit_ms(settings)},
        EXECUTE_BATCH_ACTOR: {"time_limit": batch_backstop_limit_ms(settings)},
        DELIVER_ACTOR: {
            "retry_when": should_retry(settings.webhook_max_retries),
            "max_backoff": int(settings.webhook_max_backoff_sec * 1000),
            "time_limit": attempt_limit_ms(settings),
        },
        DELIVER_BATCH_ACTOR: {
            "max_backoff": int(settings.webhook_max_backoff_sec * 1000),
            "time_limit": batch_attempt_limit_ms(settings),
        },
    }
