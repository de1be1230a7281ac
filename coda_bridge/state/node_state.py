"""The node's shared state in the local broker Redis, namespaced by ``qpu_id``.

Bridge, workers and web processes share it: the jobs running now, the
time of the last job, cloud-Redis health, the last stream read, VPN state,
connectivity, whether the cloud's API answers, the cloud clock's offset and
the counters behind ``/metrics``.  Values that a living
process must keep fresh carry an expiry, so a dead process reads as
unhealthy rather than frozen in its last good state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from ..replies import as_text
from .broker_keys import node_key

__all__ = ["COUNTERS", "NodeState", "utc_iso"]

#: How long a running-job mark lives without a refresh (the executor refreshes it while it runs).
RUNNING_TTL_SEC = 30.0
#: How long an "unreachable" mark of the cloud's API lives unless a failed request renews it.
CLOUD_DOWN_TTL_SEC = 600.0

#: Clear the "unreachable" mark; when there was one, note the time the cloud answered again.
_CLOUD_ANSWERED = """
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[3], ARGV[1])
  return 1
end
return 0
"""

#: The counters kept for ``/metrics``, by name.
COUNTERS = (
    "jobs_completed",
    "jobs_failed",
    "jobs_cancelled",
    "jobs_skipped",
    "executor_seconds",
    "executor_processes_died",
    "executor_processes_killed",
    "webhook_attempts",
    "webhook_failures",
    "webhook_dead_letters",
    "heartbeats_sent",
    "heartbeats_rejected",
    "heartbeats_withheld",
)


def utc_iso(ts: float | None = None) -> str:
    """An ISO-8601 UTC time with a ``Z``, as the cloud expects."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NodeState:
    """Typed access to the node's keys; each method is a round trip or two, or rides a given pipeline."""

    def __init__(self, client: redis.Redis, qpu_id: str) -> None:
        self.client = client
        self.qpu_id = qpu_id

    def key(self, name: str) -> str:
        return node_key(self.qpu_id, name)

    # -- jobs running now --

    def jobs_started(
        self,
        job_ids: Sequence[str],
        ttl_sec: float = RUNNING_TTL_SEC,
        *,
        pipe: redis.client.Pipeline | None = None,
    ) -> None:
        """Mark jobs as running; a mark lapses after ``ttl_sec`` unless :meth:`job_alive` renews it."""
        if job_ids:
            deadline = time.time() + ttl_sec
            (self.client if pipe is None else pipe).zadd(
                self.key("running"), dict.fromkeys(job_ids, deadline)
            )

    def job_alive(
        self, job_id: str, ttl_sec: float = RUNNING_TTL_SEC, *, pipe: redis.client.Pipeline | None = None
    ) -> None:
        (self.client if pipe is None else pipe).zadd(
            self.key("running"), {job_id: time.time() + ttl_sec}, xx=True
        )

    def jobs_ended(self, job_ids: Sequence[str], *, pipe: redis.client.Pipeline | None = None) -> None:
        if job_ids:
            (self.client if pipe is None else pipe).zrem(self.key("running"), *job_ids)

    def current_jobs(self) -> list[str]:
        """Jobs whose mark has not expired, oldest mark first."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.zremrangebyscore(self.key("running"), "-inf", now)  # tidying: a broker refusing writes skips it
        pipe.zrangebyscore(self.key("running"), now, "+inf")
        _, running = pipe.execute(raise_on_error=False)
        if isinstance(running, Exception):
            raise running
        return [str(as_text(j)) for j in running]

    def current_job(self) -> str | None:
        """The job marked last: the device's, while the job before it is still being recorded behind it."""
        jobs = self.current_jobs()
        return jobs[-1] if jobs else None

    # -- last successful job --

    def set_last_job_at(self, ts: float | None = None, *, pipe: redis.client.Pipeline | None = None) -> None:
        (self.client if pipe is None else pipe).set(self.key("last_job_at"), utc_iso(ts))

    def last_job_at(self) -> str | None:
        value = self.client.get(self.key("last_job_at"))
        return as_text(value) if value is not None else None

    # -- the cloud's Redis, as the bridge sees it --

    def set_cloud_redis(self, healthy: bool, ttl_sec: float) -> None:
        self.client.set(self.key("cloud_redis"), "1" if healthy else "0", px=int(ttl_sec * 1000))

    def cloud_redis_healthy(self) -> bool:
        return as_text(self.client.get(self.key("cloud_redis")) or b"0") == "1"

    def stream_read(self, ts: float | None = None) -> None:
        """Record that the bridge completed a stream read (it proves the consumer is alive)."""
        self.client.set(self.key("stream_read_at"), repr(time.time() if ts is None else ts))

    def last_stream_read(self) -> float | None:
        value = self.client.get(self.key("stream_read_at"))
        return float(str(as_text(value))) if value is not None else None

    # -- VPN --

    def set_vpn_state(self, state: str, ttl_sec: float, detail: str | None = None) -> str | None:
        """Store the VPN state with an expiry; return the previous state (for transition logs)."""
        pipe = self.client.pipeline()
        pipe.get(self.key("vpn_state"))
        pipe.set(self.key("vpn_state"), state, px=int(ttl_sec * 1000))
        pipe.set(self.key("vpn_detail"), detail or "", px=int(ttl_sec * 1000))
        previous = pipe.execute()[0]
        return as_text(previous) if previous is not None else None

    def vpn_state(self) -> str:
        """The stored state, or ``booting`` when none is fresh (no check has run, or the checker died)."""
        value = self.client.get(self.key("vpn_state"))
        return str(as_text(value)) if value is not None else "booting"

    # -- what the executor can do --

    def set_executor_batch(self, capable: bool) -> None:
        """Executor workers say whether their executor has ``batch_run`` (the bridge groups jobs then)."""
        self.client.set(self.key("executor_batch"), "1" if capable else "0")

    def executor_batch(self) -> bool:
        return as_text(self.client.get(self.key("executor_batch")) or b"0") == "1"

    # -- an executor that could not be built --

    def set_executor_failure(self, error: str, ts: float | None = None) -> None:
        """Record why an executor worker could not build its executor; kept until a build succeeds.

        The worker that failed has stopped, so nothing would refresh an expiring mark:
        the record stays until :meth:`clear_executor_failure`.
        """
        record = {"error": error, "at": utc_iso(ts)}
        self.client.set(self.key("executor_failure"), json.dumps(record))

    def clear_executor_failure(self) -> None:
        self.client.delete(self.key("executor_failure"))

    def executor_failure(self) -> dict[str, str] | None:
        """``{"error": ..., "at": ...}`` of the last failed executor build, or ``None``."""
        value = self.client.get(self.key("executor_failure"))
        if value is None:
            return None
        try:
            record = json.loads(value)
        except ValueError:
            return {"error": str(as_text(value)), "at": ""}
        if not isinstance(record, dict):
            return {"error": str(record), "at": ""}
        return {"error": str(record.get("error", "")), "at": str(record.get("at", ""))}

    # -- connectivity --

    def set_connectivity(self, edges: Sequence[Sequence[int]] | None) -> None:
        if edges is None:
            self.client.delete(self.key("connectivity"))
        else:
            self.client.set(self.key("connectivity"), json.dumps([list(e) for e in edges]))

    def connectivity(self) -> list[list[int]] | None:
        value = self.client.get(self.key("connectivity"))
        return json.loads(value) if value is not None else None

    # -- heartbeat --

    def heartbeat_accepted(self, ts: float | None = None) -> None:
        self.client.set(self.key("heartbeat_ok_at"), repr(time.time() if ts is None else ts))

    def last_heartbeat_accepted(self) -> float | None:
        value = self.client.get(self.key("heartbeat_ok_at"))
        return float(str(as_text(value))) if value is not None else None

    # -- the cloud's API: unreachable since when, back since when --

    def cloud_unreachable(
        self, error: str, ttl_sec: float = CLOUD_DOWN_TTL_SEC, ts: float | None = None
    ) -> None:
        """A request to the cloud's API failed in transport or with a 5xx: mark it down (first time kept)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.key("cloud_down_since"), repr(time.time() if ts is None else ts), nx=True)
        pipe.pexpire(self.key("cloud_down_since"), int(ttl_sec * 1000))
        pipe.set(self.key("cloud_down_error"), error, px=int(ttl_sec * 1000))
        pipe.execute()

    def cloud_answered(self, ts: float | None = None) -> bool:
        """The cloud's API answered: clear the down mark; True when it was down (the cloud is back now)."""
        keys = (self.key("cloud_down_since"), self.key("cloud_down_error"), self.key("cloud_back_at"))
        return bool(self.client.eval(_CLOUD_ANSWERED, 3, *keys, repr(time.time() if ts is None else ts)))

    def cloud_down(self) -> tuple[float, str] | None:
        """Since when the cloud's API has not answered, and the last error; ``None`` while it answers."""
        since, error = self.client.mget(self.key("cloud_down_since"), self.key("cloud_down_error"))
        if since is None:
            return None
        return float(str(as_text(since))), str(as_text(error) or "")

    def cloud_back_at(self) -> float | None:
        """When the cloud's API last answered after being down."""
        value = self.client.get(self.key("cloud_back_at"))
        return float(str(as_text(value))) if value is not None else None

    # -- the cloud's clock --

    def set_clock_offset(self, offset_sec: float, ts: float | None = None) -> None:
        """The cloud's clock minus this host's, as measured from the cloud's ``Date`` header."""
        record = {"offset_sec": offset_sec, "at": time.time() if ts is None else ts}
        self.client.set(self.key("clock_offset"), json.dumps(record))

    def clock_offset(self) -> tuple[float, float] | None:
        """The last measured offset and when it was measured (Unix seconds, this host's clock)."""
        value = self.client.get(self.key("clock_offset"))
        if value is None:
            return None
        try:
            record = json.loads(value)
            return float(record["offset_sec"]), float(record["at"])
        except (ValueError, KeyError, TypeError):
            return None

    # -- no jobs worker ready: since when, and whether heartbeats are withheld for it --

    def no_jobs_worker_since(self, ttl_sec: float, now: float | None = None) -> float:
        """When the node was first seen without a ready jobs worker (now, if this is the first time).

        The mark lapses ``ttl_sec`` after the last look, so a node stopped and started later
        does not inherit the absence of its previous run.
        """
        now = time.time() if now is None else now
        key, ttl_ms = self.key("no_jobs_worker_since"), int(ttl_sec * 1000)
        pipe = self.client.pipeline()
        pipe.set(key, repr(now), nx=True, px=ttl_ms)
        pipe.pexpire(key, ttl_ms)
        pipe.get(key)
        value = pipe.execute()[2]
        return float(str(as_text(value))) if value is not None else now

    def withhold_heartbeats(self, ttl_sec: float) -> bool:
        """Mark heartbeats withheld (lapsing like the absence); True when they were not already."""
        key, ttl_ms = self.key("heartbeats_withheld"), int(ttl_sec * 1000)
        pipe = self.client.pipeline()
        pipe.set(key, "1", nx=True, px=ttl_ms)
        pipe.pexpire(key, ttl_ms)
        return bool(pipe.execute()[0])

    def jobs_worker_ready(self) -> bool:
        """Forget the absence; True when heartbeats had been withheld for it (they resume now)."""
        pipe = self.client.pipeline()
        pipe.delete(self.key("no_jobs_worker_since"))
        pipe.delete(self.key("heartbeats_withheld"))
        return bool(pipe.execute()[1])

    # -- counters for /metrics --

    def count(self, name: str, amount: float = 1, *, pipe: redis.client.Pipeline | None = None) -> None:
        """Add to a counter, or queue the addition on ``pipe`` to ride another round trip."""
        client = self.client if pipe is None else pipe  # an empty pipeline is falsy
        if isinstance(amount, int):
            client.hincrby(self.key("counters"), name, amount)
        else:
            client.hincrbyfloat(self.key("counters"), name, amount)

    def counters(self) -> dict[str, float]:
        raw: Mapping[Any, Any] = self.client.hgetall(self.key("counters"))
        values = dict.fromkeys(COUNTERS, 0.0)
        values.update({str(as_text(k)): float(str(as_text(v))) for k, v in raw.items()})
        return values
