"""What ``/metrics`` serves: the node's shared state, read from the broker Redis at scrape time.

Every value comes from the broker Redis (or, for the stream, the cloud's
Redis) when Prometheus scrapes, so any gunicorn worker answers the same.
The families:

- the node's counters and gauges (jobs by outcome, deliveries, heartbeats,
  queue and dead-letter depths, VPN state, running jobs, the cloud clock's
  offset, whether the cloud's API answers, the pause with its note and end,
  the device state), and the times of the last accepted heartbeat and the
  last stream read;
- the node's histograms (:mod:`coda_bridge.metrics.observations`): job
  duration, one delivery request, XADD to accepted result, delivery attempts;
- dramatiq's own metrics under dramatiq's names (``dramatiq_messages_total``,
  ``dramatiq_message_duration_milliseconds``, ...), written by every worker's
  :class:`~coda_bridge.metrics.observations.DramatiqMetrics` middleware;
- the job stream's consumer group as the cloud's Redis reports it (lag,
  pending entries, the age of the oldest pending entry);
- ``coda_bridge_build_info`` and the probes app's process metrics.

No family or label carries a secret: names, queues, actors, outcomes, versions and the
operator's pause note only.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psutil
import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..cloud.redis_keys import group_name, stream_key
from ..control.pause_book import NodeHold, PauseBook
from ..device import DeviceState
from ..queueing.queues import QUEUES
from ..queueing.redis_broker import create_broker
from ..replies import as_text
from ..settings import Settings
from ..state.node_state import NodeState
from ..state.registry import ready_jobs_workers
from ..version import __version__
from ..vpn.states import VPN_STATES
from .histograms import Histograms, entry_time_sec
from .observations import DramatiqReader

__all__ = ["NodeCollector", "ProcessTreeCollector"]

logger = logging.getLogger(__name__)

_JOB_OUTCOMES = ("completed", "failed", "cancelled", "skipped")
#: On a cloud Redis before 7 (no ``lag`` in XINFO GROUPS) the unread entries are counted up to this many.
STREAM_LAG_COUNT_MAX = 100


def _hold_families(hold: NodeHold) -> Iterator[Any]:
    """The pause (and its end) and the device state the executor reported."""
    yield GaugeMetricFamily(
        "coda_bridge_paused",
        "1 while the node is paused (it takes no new job).",
        value=float(hold.pause is not None),
    )
    yield GaugeMetricFamily(
        "coda_bridge_pause_end_timestamp_seconds",
        "Unix time the pause in force ends (0: not paused).",
        value=hold.pause.until if hold.pause is not None else 0.0,
    )
    if hold.pause is not None:
        info = GaugeMetricFamily("coda_bridge_pause_info", "The pause in force: its note.", labels=["note"])
        info.add_metric([hold.pause.note], 1.0)
        yield info
    device = GaugeMetricFamily(
        "coda_bridge_device_state",
        "1 for the state the executor's status() reported (all 0: no fresh report).",
        labels=["state"],
    )
    for state in DeviceState:
        device.add_metric([state.value], 1.0 if hold.device is state else 0.0)
    yield device


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


class NodeCollector:
    """Prometheus collector over the node's shared state (a few pipelined round trips per scrape)."""

    def __init__(self, settings: Settings, state: NodeState, cloud: redis.Redis | None = None) -> None:
        self.state = state
        self.cloud = cloud
        self.broker = create_broker(settings)
        self.histograms = Histograms(state.client, state.qpu_id)
        self.dramatiq = DramatiqReader(
            state.client, state.qpu_id, self.broker.namespace, self.broker.heartbeat_timeout
        )
        self.process = ProcessTreeCollector()
        self.build = {
            "version": __version__,
            "python": platform.python_version(),
            "dramatiq": _package_version("dramatiq"),
        }

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        yield from self._node()
        yield from self.histograms.families()
        yield from self.dramatiq.families()
        yield from self._stream()
        build = GaugeMetricFamily(
            "coda_bridge_build_info", "The coda-bridge version serving /metrics.", labels=list(self.build)
        )
        build.add_metric(list(self.build.values()), 1.0)
        yield build
        yield from self.process.collect()

    def _node(self) -> Iterator[Any]:
        state = self.state
        counters = state.counters()
        jobs = CounterMetricFamily("coda_bridge_jobs", "Jobs finished, by outcome.", labels=["outcome"])
        for outcome in _JOB_OUTCOMES:
            jobs.add_metric([outcome], counters.get(f"jobs_{outcome}", 0.0))
        yield jobs
        yield CounterMetricFamily(
            "coda_bridge_executor_seconds", "Time spent in the executor.", value=counters["executor_seconds"]
        )
        lost = CounterMetricFamily(
            "coda_bridge_executor_processes_lost",
            "Executor child processes replaced: died during a run, or killed past a cancel or time limit.",
            labels=["reason"],
        )
        lost.add_metric(["died"], counters["executor_processes_died"])
        lost.add_metric(["killed"], counters["executor_processes_killed"])
        yield lost
        yield CounterMetricFamily(
            "coda_bridge_webhook_attempts", "Result deliveries attempted.", value=counters["webhook_attempts"]
        )
        yield CounterMetricFamily(
            "coda_bridge_webhook_failures",
            "Deliveries that will be retried.",
            value=counters["webhook_failures"],
        )
        yield CounterMetricFamily(
            "coda_bridge_webhook_dead_letters",
            "Results that ran out of delivery retries.",
            value=counters["webhook_dead_letters"],
        )
        yield CounterMetricFamily(
            "coda_bridge_heartbeats", "Heartbeats accepted by the cloud.", value=counters["heartbeats_sent"]
        )
        yield CounterMetricFamily(
            "coda_bridge_heartbeats_rejected",
            "Heartbeats refused or not delivered.",
            value=counters["heartbeats_rejected"],
        )
        yield CounterMetricFamily(
            "coda_bridge_heartbeats_withheld",
            "Heartbeats not sent because no jobs worker had a built executor for longer than the grace.",
            value=counters["heartbeats_withheld"],
        )
        yield GaugeMetricFamily(
            "coda_bridge_jobs_workers_ready",
            "Live jobs workers whose executor is built (0: the node cannot run a job).",
            value=float(len(ready_jobs_workers(state.client, state.qpu_id))),
        )
        depth = GaugeMetricFamily("coda_bridge_queue_depth", "Messages waiting, by queue.", labels=["queue"])
        dead = GaugeMetricFamily(
            "coda_bridge_dead_letter_depth", "Dead-lettered messages, by queue.", labels=["queue"]
        )
        sizes = self.broker.queue_sizes()
        for queue in QUEUES:
            depth.add_metric([queue], sizes.get(queue, 0))
            dead.add_metric([queue], sizes.get(f"{queue}.dead", 0))
        yield depth
        yield dead
        last = state.last_heartbeat_accepted()
        since = GaugeMetricFamily(
            "coda_bridge_seconds_since_heartbeat", "Seconds since the cloud last accepted a heartbeat."
        )
        since.add_metric([], time.time() - last if last else float("nan"))
        yield since
        yield GaugeMetricFamily(
            "coda_bridge_last_heartbeat_timestamp_seconds",
            "Unix time the cloud last accepted a heartbeat (0: never).",
            value=last or 0.0,
        )
        yield GaugeMetricFamily(
            "coda_bridge_last_stream_read_timestamp_seconds",
            "Unix time the bridge last completed a read of the job stream (0: never).",
            value=state.last_stream_read() or 0.0,
        )
        vpn = GaugeMetricFamily("coda_bridge_vpn_state", "1 for the current VPN state.", labels=["state"])
        current = state.vpn_state()
        for name in VPN_STATES:
            vpn.add_metric([name], 1.0 if name == current else 0.0)
        yield vpn
        yield GaugeMetricFamily(
            "coda_bridge_running_jobs", "Jobs running now.", value=len(state.current_jobs())
        )
        clock = state.clock_offset()
        yield GaugeMetricFamily(
            "coda_bridge_clock_offset_seconds",
            "The cloud's clock minus this host's, from the cloud's Date header (NaN: not measured yet).",
            value=clock[0] if clock is not None else float("nan"),
        )
        yield GaugeMetricFamily(
            "coda_bridge_cloud_api_up",
            "1 while the cloud's API answers the node's requests, 0 since one met a transport error or 5xx.",
            value=0.0 if state.cloud_down() is not None else 1.0,
        )
        yield from _hold_families(PauseBook(state.client, state.qpu_id).hold())

    def _stream(self) -> Iterator[Any]:
        """The consumer group on the cloud's job stream; only ``cloud_redis_up 0`` when it does not answer."""
        if self.cloud is None:
            return
        qpu = self.state.qpu_id
        replies: list[Any] = []
        try:
            pipe = self.cloud.pipeline(transaction=False)
            pipe.xinfo_groups(stream_key(qpu))
            pipe.xpending(stream_key(qpu), group_name(qpu))
            replies = pipe.execute(raise_on_error=False)  # a missing stream or group is an answer too
        except redis.RedisError as exc:
            logger.debug("The cloud's Redis did not answer a scrape: %s", exc)
        yield GaugeMetricFamily(
            "coda_bridge_cloud_redis_up",
            "1 when this scrape reached the cloud's Redis.",
            value=float(bool(replies)),
        )
        if not replies:
            return
        groups, pending = replies
        if isinstance(groups, Exception) or isinstance(pending, Exception):
            return  # no stream or no group yet (the bridge creates them), or no answer
        wanted = group_name(qpu)
        group = next((g for g in groups if as_text(g.get("name")) == wanted), None)
        if group is None:
            return
        lag = self._lag(qpu, group)
        if lag is not None:
            yield GaugeMetricFamily(
                "coda_bridge_stream_lag_entries",
                f"Stream entries not yet read by the node's consumer group (at most {STREAM_LAG_COUNT_MAX} "
                "counted on a Redis before 7).",
                value=float(lag),
            )
        yield GaugeMetricFamily(
            "coda_bridge_stream_pending_entries",
            "Stream entries read and not yet acknowledged (their results are not at the cloud yet).",
            value=float(pending.get("pending") or 0),
        )
        oldest = entry_time_sec(str(as_text(pending.get("min")))) if pending.get("min") else None
        yield GaugeMetricFamily(
            "coda_bridge_stream_oldest_pending_age_seconds",
            "Seconds since the XADD of the oldest unacknowledged stream entry (0: none).",
            value=max(0.0, time.time() - oldest) if oldest is not None else 0.0,
        )

    def _lag(self, qpu: str, group: dict[str, Any]) -> int | None:
        """The group's lag: Redis 7 reports it; before 7, the entries after the last one read, counted."""
        if group.get("lag") is not None:
            return int(group["lag"])
        if "entries-read" in group:  # Redis 7 with the lag unknown (entries deleted from the middle)
            return None
        last = as_text(group.get("last-delivered-id")) or "0-0"
        assert self.cloud is not None
        try:
            unread = self.cloud.xrange(stream_key(qpu), min=f"({last}", count=STREAM_LAG_COUNT_MAX)
        except redis.RedisError:
            return None
        return len(unread or [])


class ProcessTreeCollector:
    """``process_*`` metrics of the probes app as one service: the gunicorn master and all its workers.

    prometheus_client's own process collector reports the process that
    answers; under gunicorn that changes from scrape to scrape, and a CPU
    counter that jumps between workers reads as resets.  Here the figures
    are of the master and its children together, whichever worker answers.
    """

    def describe(self) -> list[Any]:
        return []

    @staticmethod
    def root() -> psutil.Process:
        """The gunicorn master when this process is one of its workers, else this process."""
        me = psutil.Process()
        try:
            parent = me.parent()
            if parent is not None and any("gunicorn" in part for part in parent.cmdline()):
                return parent
        except psutil.Error:
            pass
        return me

    def collect(self) -> Iterator[Any]:
        root = self.root()
        cpu = rss = vms = fds = 0.0
        try:
            members = [root, *root.children(recursive=True)]
            start = root.create_time()
            max_fds = float(root.rlimit(psutil.RLIMIT_NOFILE)[0])
        except psutil.Error:
            return
        for member in members:
            try:
                with member.oneshot():
                    times = member.cpu_times()
                    memory = member.memory_info()
                    cpu += times.user + times.system
                    rss += memory.rss
                    vms += memory.vms
                    fds += member.num_fds()
            except psutil.Error:  # a worker that exited meanwhile
                continue
        yield CounterMetricFamily(
            "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", value=cpu
        )
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.", value=rss)
        yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.", value=vms)
        yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.", value=fds)
        yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", value=max_fds)
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            value=start,
        )
        yield GaugeMetricFamily(
            "coda_bridge_web_processes", "Processes of the probes app (gunicorn master and workers).",
            value=float(len(members)),
        )  # fmt: skip
