"""The fault suite: over a hundred jobs through a real node while its processes and the cloud misbehave.

Seeded and timed (about 30 s when every job comes through): kill -9 and
restart each process type three times at random moments while jobs are
submitted, crash the cloud's Redis (it keeps an fsync-always append-only
file, as a production one would) and restart it while jobs wait in the
local queue, answer 503 to every webhook for 10 s, and 400 to one job's.
Every job must end with a terminal result, none may run again after its
result was delivered, none may run twice at once, and no result may be
wrong.  Duplicate deliveries are reported, not failed.  The scenario is
``bench/faults.py``'s, compressed: fewer jobs at the same rate, the faults
closer together and shorter, each still longer than the node's recovery
settings (``fault_support.stack_env``: claim idle and worker heartbeat
timeout 5 s, a job claim's lease 3 s, webhook timeout 10 s and backoff up
to 2 s); the bench runs the full 300 jobs,
30 s outages, and records its table in ``bench/RESULTS.md``.

The kill scenario runs against the Procfile's own command lines
(``coda-bridge bridge`` and the ``dramatiq`` workers, as honcho, systemd
and Kubernetes run them; the scenario kills and starts each process),
against ``coda-bridge start`` (the scenario kills a part, its supervisor
starts it again) and against ``start --one-process`` (the one process
killed and started again); the broker faults against the Procfile's lines
and against ``coda-bridge start``.  Every mode runs the same bridge
(:class:`~coda_bridge.pipeline.bridge.BridgeProcess`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fault_support import FaultPlan, run_fault_scenario

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(300)]

#: The kill scenario: 120 jobs over 18 s (about the bench's rate), three kills of each process type while
#: jobs still come (spaced by the time one takes to come back), the cloud Redis crash under a 20-job
#: burst, 10 s of 503s.
KILL_SCENARIO = FaultPlan(
    jobs=120,
    submit_span_sec=18.0,
    burst_jobs=20,
    chaos_end_sec=16.0,
    redis_crash_at_sec=(6.0, 12.0),
    outage_start_sec=4.0,
    outage_sec=10.0,
)
#: The broker scenarios: 100 jobs over 15 s, the broker fault 6 s in, while jobs still come.
BROKER_SCENARIO = FaultPlan(jobs=100, submit_span_sec=15.0, broker_fault_at_sec=6.0)
#: How long the broker is unreachable: twice the node's longest broker wait (claim idle and worker
#: heartbeat timeout, 5 s in ``fault_support.stack_env``), so every one of them runs out meanwhile.
UNREACHABLE_SEC = 12.0


def _table(rows: list[list[object]]) -> str:
    width = max(len(str(r[0])) for r in rows)
    return "\n".join(f"{str(label).ljust(width)}  {value}" for label, value in rows)


@pytest.mark.parametrize("mode", ["procfile", "start", "one-process"])
def test_no_job_lost_rerun_or_wrong_under_kills_redis_crash_and_cloud_errors(
    tmp_path: Path, mode: str
) -> None:
    plan = replace(KILL_SCENARIO, results_timeout_sec=100.0, mode=mode)

    report = run_fault_scenario(plan, tmp_path, progress=print)

    print("\n" + _table(report.rows()))
    for at, what in report.events:
        print(f"  +{at:5.1f} s  {what}")
    assert report.submitted and len(report.submitted) == plan.jobs
    assert sum(report.kills.values()) == plan.kills_per_type * len(plan.killed_types), "every kill happened"
    kills = [at for at, what in report.events if what.startswith("kill -9")]
    assert max(kills) < report.seconds_to_all_results, "every kill landed while jobs were in flight"
    assert report.outage_answers > 0, "the 503 window was hit"
    assert report.lost == [], f"jobs lost: {report.lost}"
    assert report.runs_after_delivery == [], f"jobs run again after delivery: {report.runs_after_delivery}"
    assert report.concurrent_runs == [], f"jobs run twice at once: {report.concurrent_runs}"
    assert report.wrong_results == [], f"wrong results: {report.wrong_results}"
    assert report.refused_state == "failed", "the job answered 400 ends failed"
    assert report.refused_attempts == 1, "a 4xx answer is final: no second attempt"
    assert report.not_terminal_status == []


@pytest.mark.parametrize("mode", ["procfile", "start"])
@pytest.mark.parametrize(
    ("fault", "down_sec"),
    [("kill", 2.0), ("flush", 0.0), ("pause", UNREACHABLE_SEC)],
    ids=["broker-killed-no-persistence", "broker-flushed", f"broker-unreachable-{UNREACHABLE_SEC:g}s"],
)
def test_no_job_lost_rerun_or_wrong_when_the_broker_loses_its_data(
    tmp_path: Path, fault: str, down_sec: float, mode: str
) -> None:
    plan = replace(
        BROKER_SCENARIO,
        kills_per_type=0,
        cloud_redis_crash=False,
        webhook_outage=False,
        broker_fault=fault,
        broker_down_sec=down_sec,
        results_timeout_sec=120.0,
        mode=mode,
    )

    report = run_fault_scenario(plan, tmp_path, progress=print)

    print("\n" + _table(report.rows()))
    for at, what in report.events:
        print(f"  +{at:5.1f} s  {what}")
    assert len(report.submitted) == plan.jobs
    faults = [at for at, what in report.events if "broker Redis" in what]
    assert faults, "the broker fault happened"
    assert max(faults) < report.seconds_to_all_results, "the broker fault landed while jobs were in flight"
    assert report.lost == [], f"jobs lost: {report.lost}"
    assert report.runs_after_delivery == [], f"jobs run again after delivery: {report.runs_after_delivery}"
    assert report.concurrent_runs == [], f"jobs run twice at once: {report.concurrent_runs}"
    assert report.wrong_results == [], f"wrong results: {report.wrong_results}"
    assert report.refused_state == "failed", "the job answered 400 ends failed"
    assert report.not_terminal_status == []
