"""The actors' options follow the jobs worker's shape: a job prepared ahead has time for the runs ahead."""

from __future__ import annotations

from actors.actor_options import PREPARED_AHEAD_FACTOR, backstop_limit_ms
from coda_bridge.executors.isolation import QUEUED_RUNS_MAX
from coda_bridge.ops.process_list import PREPARED_AHEAD
from coda_bridge.settings import Settings


def test_the_backstop_allows_the_runs_of_every_job_prepared_before_this_one() -> None:
    # Given the jobs worker's threads: one on the device, PREPARED_AHEAD holding jobs queued behind it
    settings = Settings(job_time_limit_sec=10, executor_stop_grace_sec=5, max_executor_crashes=3)

    # When a job prepared last waits for every run before its own
    runs_before_and_own_sec = (1 + PREPARED_AHEAD) * (10 + 5) * 3

    # Then dramatiq's backstop is above all of them, and the executor's process takes as many queued
    assert PREPARED_AHEAD_FACTOR == 1 + PREPARED_AHEAD
    assert backstop_limit_ms(settings) > runs_before_and_own_sec * 1000
    assert QUEUED_RUNS_MAX >= PREPARED_AHEAD
