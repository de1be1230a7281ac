"""A broker that survives its host (issue 25, item 6): a whole node on a Sentinel broker, its primary killed.

``coda-bridge start`` runs with ``CODA_BROKER_URL=redis+sentinel://...``
(a primary, one replica, three ``redis-sentinel`` processes, quorum 2,
down-after 1 s).  While 120 jobs go through, the primary is killed -9; the
sentinels promote the replica, every process of the node finds it, and the
bridge's reconcile passes send again what the replica had not received.
Every job must end with exactly one terminal result at the cloud; runs on
the device repeated by the failover are counted and bounded, not forbidden
(a job whose result was lost with the primary runs again).
``bench/sentinel_failover.py`` runs the same and prints the figures.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fault_support import FaultPlan, run_fault_scenario

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.fault,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        shutil.which("redis-sentinel") is None,
        reason="redis-sentinel is not installed (Debian: apt-get install redis-sentinel; .ci/run does it)",
    ),
]

#: The broker's password, in CODA_BROKER_URL: it must reach no log or file of the node.
PASSWORD = "s3ntinel-broker-pw"
#: Device runs repeated by one failover, at most: the jobs in flight or finished but not yet replicated.
MAX_REPEATED_RUNS = 60


def test_every_job_gets_one_result_when_the_broker_primary_is_killed_and_a_replica_promoted(
    tmp_path: Path,
) -> None:
    # given a node started on a password-protected Sentinel broker, 120 jobs submitted over 12 s
    plan = FaultPlan(
        jobs=120,
        submit_span_sec=12.0,
        executor_sec=0.05,
        burst_jobs=0,
        kills_per_type=0,
        cloud_redis_crash=False,
        webhook_outage=False,
        broker_fault="failover",
        broker_fault_at_sec=5.0,
        broker_password=PASSWORD,
        results_timeout_sec=150.0,
        mode="start",
    )

    # when its primary is killed -9 mid-run
    report = run_fault_scenario(plan, tmp_path, progress=print)

    # then a replica was promoted, and every job has one terminal result, none wrong, none run twice at once
    print("\n" + "\n".join(f"{label}: {value}" for label, value in report.rows()))
    for at, what in report.events:
        print(f"  +{at:5.1f} s  {what}")
    assert len(report.submitted) == plan.jobs
    assert any("promoted" in what for _, what in report.events), "the failover happened"
    killed = [at for at, what in report.events if "primary" in what and "killed" in what]
    assert killed and killed[0] < report.seconds_to_all_results, "the primary died while jobs were in flight"
    assert report.lost == [], f"jobs lost: {report.lost}"
    assert report.not_terminal_status == []
    assert report.wrong_results == [], f"wrong results: {report.wrong_results}"
    assert report.concurrent_runs == [], f"jobs run twice at once: {report.concurrent_runs}"
    assert report.runs_after_delivery == [], f"jobs run again after delivery: {report.runs_after_delivery}"
    assert report.refused_state == "failed", "the job answered 400 ends failed"
    assert report.jobs_run_more_than_once <= MAX_REPEATED_RUNS, "repeated device runs are bounded"
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    written = [path for path in files if PASSWORD.encode() in path.read_bytes()]
    assert written == [], "the broker's password reached a log or a file"
