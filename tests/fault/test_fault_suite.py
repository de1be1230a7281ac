"""The fault suite: 300 jobs through a real node while its processes and the cloud misbehave.

Seeded and timed (about 70 s when every job comes through): kill -9 and
restart each process type three times at random moments, crash the
cloud's Redis (it keeps an fsync-always append-only file, as a production
one would) and restart it while jobs wait in the local queue, answer 503
to every webhook for 30 s, and 400 to one job's.  Every job must end with
a terminal result, none may run again after its result was delivered,
none may run twice at once, and no result may be wrong.  Duplicate
deliveries are reported, not failed.  ``bench/faults.py`` runs the same
scenario and records its table in ``bench/RESULTS.md``.

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

from pathlib import Path

import pytest
from fault_support import FaultPlan, run_fault_scenario

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(300)]


def _table(rows: list[list[object]]) -> str:
    width = max(len(str(r[0])) for r in rows)
    return "\n".join(f"{str(label).ljust(width)}  {value}" for label, value in rows)


@pytest.mark.parametrize("mode", ["procfile", "start", "one-process"])
def test_no_job_lost_rerun_or_wrong_under_kills_redis_crash_and_cloud_errors(
    tmp_path: Path, mode: str
) -> None:
    plan = FaultPlan(results_timeout_sec=100.0, mode=mode)

    report = run_fault_scenario(plan, tmp_path, progress=print)

    print("\n" + _table(report.rows()))
    for at, what in report.events:
        print(f"  +{at:5.1f} s  {what}")
    assert report.submitted and len(report.submitted) == plan.jobs
    assert sum(report.kills.values()) == plan.kills_per_type * len(plan.killed_types), "every kill happened"
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
    [("kill", 2.0), ("flush", 0.0), ("pause", 30.0)],
    ids=["broker-killed-no-persistence", "broker-flushed", "broker-unreachable-30s"],
)
def test_no_job_lost_rerun_or_wrong_when_the_broker_loses_its_data(
    tmp_path: Path, fault: str, down_sec: float, mode: str
) -> None:
    plan = FaultPlan(
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
    assert any("broker Redis" in what for _, what in report.events), "the broker fault happened"
    assert report.lost == [], f"jobs lost: {report.lost}"
    assert report.runs_after_delivery == [], f"jobs run again after delivery: {report.runs_after_delivery}"
    assert report.concurrent_runs == [], f"jobs run twice at once: {report.concurrent_runs}"
    assert report.wrong_results == [], f"wrong results: {report.wrong_results}"
    assert report.refused_state == "failed", "the job answered 400 ends failed"
    assert report.not_terminal_status == []
