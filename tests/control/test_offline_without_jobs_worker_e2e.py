"""A node that cannot run jobs goes offline at the cloud, and comes back once a jobs worker is ready.

Real processes: a whole local node (bridge, dramatiq workers, probes app
under gunicorn) against the local cloud simulator, whose QPU shows offline
after a short threshold here (90 s at the real cloud).
"""

from __future__ import annotations

import os
import re
import textwrap
import time
from pathlib import Path

import pytest
import requests
from pipeline_support import SUITE_RESULT_PROCESSES

from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.ops.exits import EX_CONFIG
from coda_bridge.state.node_state import NodeState

pytestmark = pytest.mark.e2e

#: The grace without a ready jobs worker before heartbeats stop (seconds).
GRACE_SEC = 3
#: The simulator shows a QPU offline this long after its last heartbeat (the real cloud: 90 s).
OFFLINE_AFTER_SEC = 5
#: Room for a busy machine on top of grace plus threshold (seconds).
MARGIN_SEC = 30
#: The gauge of jobs workers whose executor is built.
READY_GAUGE = "coda_bridge_jobs_workers_ready"
#: How long a jobs worker may take to give up at boot, or to become ready (seconds).
BOOT_SEC = 60

FACTORY_SOURCE = '''
"""Raises at build time until a file named FIXED sits beside it; then an all-zeros executor."""
from pathlib import Path

FIXED = Path(__file__).with_name("FIXED")


class ZerosExecutor:
    def run(self, ir, shots):
        return {"counts": {"0" * len(ir.measurements): shots}, "execution_time_ms": 0.0,
                "shots_completed": shots}


def create_executor(settings):
    if not FIXED.exists():
        raise ValueError("device file site/device.yaml: unknown key 'runer_mode'")
    return ZerosExecutor()
'''


def _env(mods: Path) -> dict[str, str]:
    mods.mkdir(parents=True, exist_ok=True)
    (mods / "offline_test_factory.py").write_text(textwrap.dedent(FACTORY_SOURCE), encoding="utf-8")
    return {
        "CODA_EXECUTOR_FACTORY": "offline_test_factory:create_executor",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(mods), os.environ.get("PYTHONPATH")])),
        "CODA_HEARTBEAT_INTERVAL_SEC": "1",
        "CODA_VPN_CHECK_INTERVAL_SEC": "1",
        "CODA_JOBS_WORKER_GRACE_SEC": str(GRACE_SEC),
        "CODA_SHUTDOWN_DRAIN_TIMEOUT_SEC": "2",
        "CODA_RESULT_PROCESSES": SUITE_RESULT_PROCESSES,
    }


def _metric(stack: LocalStack, name: str) -> float | None:
    try:
        body = requests.get(f"http://127.0.0.1:{stack.web_port}/metrics", timeout=10).text
    except requests.RequestException:
        return None
    found = re.search(rf"^{name} (\S+)$", body, re.M)
    return float(found.group(1)) if found else None


def _online(stack: LocalStack) -> bool:
    return bool(stack.cloud.qpu(stack.qpu_id)["online"])


def test_a_jobs_worker_exiting_78_takes_the_qpu_offline_until_a_good_one_is_ready(tmp_path: Path) -> None:
    # given a node whose executor cannot be built, on a cloud that shows a QPU offline after 5 s
    mods = tmp_path / "mods"
    (tmp_path / "node").mkdir()
    devcloud_args = ["--offline-after-sec", str(OFFLINE_AFTER_SEC)]
    with LocalStack(tmp_path / "node", env=_env(mods), web=True, devcloud_args=devcloud_args) as stack:
        # (online at first: heartbeats go during the grace)
        wait_until(lambda: _online(stack), BOOT_SEC, "the QPU to show online")
        # when its jobs worker exits 78 at boot
        jobs = stack.children["jobs"]
        wait_until(lambda: not jobs.alive(), BOOT_SEC, "the jobs worker to give up")
        assert jobs.process.returncode == EX_CONFIG

        # then the cloud sees the QPU offline within the grace plus its threshold
        wait_until(
            lambda: not _online(stack), GRACE_SEC + OFFLINE_AFTER_SEC + MARGIN_SEC, "the QPU to show offline"
        )
        # and the metric says no jobs worker is ready, while heartbeats are withheld
        assert wait_until(lambda: _metric(stack, READY_GAUGE) == 0.0, MARGIN_SEC, "the ready gauge at 0")
        assert wait_until(
            lambda: (_metric(stack, "coda_bridge_heartbeats_withheld_total") or 0.0) > 0,
            MARGIN_SEC,
            "withheld",
        )
        # and the control worker said so once, in one WARNING line naming what to do
        control = stack.log_tail("control", 2000)
        stops = [line for line in control.splitlines() if "heartbeats stop" in line]
        assert len(stops) == 1, control
        assert " WARNING " in stops[0] and "coda-bridge doctor" in stops[0]
        assert "Traceback" not in control

        # when the executor is fixed and a jobs worker started again
        (mods / "FIXED").touch()
        stack.start_process("jobs")

        # then heartbeats resume: the cloud sees the QPU online again, the gauge is 1
        wait_until(lambda: _online(stack), BOOT_SEC, "the QPU to show online again")
        assert wait_until(lambda: _metric(stack, READY_GAUGE) == 1.0, MARGIN_SEC, "the ready gauge at 1")
        assert "heartbeats resume" in stack.log_tail("control", 2000)


@pytest.mark.parametrize("mode", ["one-process", "start"])
def test_a_healthy_node_keeps_heartbeating_past_the_grace(tmp_path: Path, mode: str) -> None:
    # given a node with a working executor, under start or in one process (where every part shares a pid)
    env = {
        "CODA_EXECUTOR_FACTORY": "noop",
        "CODA_HEARTBEAT_INTERVAL_SEC": "1",
        "CODA_JOBS_WORKER_GRACE_SEC": str(GRACE_SEC),
        "CODA_SHUTDOWN_DRAIN_TIMEOUT_SEC": "2",
        "CODA_RESULT_PROCESSES": SUITE_RESULT_PROCESSES,
    }
    (tmp_path / "node").mkdir()
    with LocalStack(tmp_path / "node", env=env, mode=mode) as stack:
        # when it has run for several graces
        since = time.time()
        later = since + 4 * GRACE_SEC
        wait_until(
            lambda: any(b["received_at"] > later for b in stack.cloud.heartbeats(stack.qpu_id)),
            BOOT_SEC,
            "a heartbeat after several graces",
        )
        # then none was withheld, and the QPU is online
        assert NodeState(stack.broker_redis.client(), stack.qpu_id).counters()["heartbeats_withheld"] == 0
        assert _online(stack)
        assert "heartbeats stop" not in stack.log_tail("node" if mode == "one-process" else "start", 3000)
