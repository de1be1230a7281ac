"""Every key the node writes or reads in the broker Redis: its own records and dramatiq's layout.

The node's own records live under ``coda-bridge:{qpu_id}:``, one family per
second segment (``job``, ``claim``, ``entry``, ``node``, ``process`` ...),
so several QPUs at one site can share one Redis.  dramatiq's keys live under
:func:`broker_namespace`, spelled as dramatiq's Redis broker spells them
(``{namespace}:{queue}``, ``.msgs``, ``.XQ``, ``__heartbeats__``); the node
reads them by hand only through the builders here.

An id (QPU, job, entry, host, consumer ...) is data, never structure: it
enters a key only through :func:`key_part`, which percent-encodes every
character but letters, digits and ``_.-~``, so no id can reach into another
id's key or another family's (``K`` and ``K:delivering`` stay apart), nor
into a ``SCAN`` pattern, and readable ids stay readable.
"""

from __future__ import annotations

from urllib.parse import quote

__all__ = [
    "acks_key_prefix",
    "DEAD_MESSAGES_SUFFIX",
    "MESSAGES_SUFFIX",
    "bridge_key",
    "broker_namespace",
    "claim_key",
    "dead_messages_key",
    "dead_queue_key",
    "delivery_lease_key",
    "device_key",
    "dramatiq_counters_key",
    "dramatiq_live_key",
    "entry_key",
    "heartbeats_key",
    "histogram_key",
    "job_key",
    "key_part",
    "messages_key",
    "node_key",
    "node_pattern",
    "pause_key",
    "process_key",
    "process_pattern",
    "queue_key",
    "queue_key_prefix",
    "ready_index_key",
    "ready_key",
    "ready_pattern",
    "tick_key",
    "timeline_key",
    "wake_key",
    "window_key",
]

#: The first segment of every key the node owns.
_ROOT = "coda-bridge"
#: dramatiq's suffixes of a queue's key: the message bodies, the dead-letter set and its bodies.
MESSAGES_SUFFIX = ".msgs"
_DEAD_SUFFIX = ".XQ"
DEAD_MESSAGES_SUFFIX = f"{_DEAD_SUFFIX}{MESSAGES_SUFFIX}"
#: The node's wake-up token list beside each queue (see :mod:`~coda_bridge.queueing.redis_broker`).
_WAKE_SUFFIX = ".wake"
#: dramatiq's sorted set of live worker heartbeats, per namespace.
_HEARTBEATS = "__heartbeats__"
#: dramatiq's set of one worker's unacknowledged messages of one queue: ``__acks__.{worker}.{queue}``.
_ACKS = "__acks__."


def key_part(value: str | int) -> str:
    """``value`` as one segment of a key: one-to-one, and never a ``:``, brace, glob character or control.

    Byte-exact for text the cloud's client decoded with ``surrogateescape``.
    """
    return quote(str(value).encode("utf-8", "surrogateescape"), safe="")


def _key(qpu_id: str, family: str, *parts: str | int) -> str:
    """``coda-bridge:{qpu}:{family}[:{part}...]``, every id escaped."""
    return ":".join([_ROOT, key_part(qpu_id), family, *(key_part(part) for part in parts)])


def node_pattern(qpu_id: str) -> str:
    """A ``SCAN`` pattern matching every key of one QPU's namespace (dramatiq's included)."""
    return f"{_ROOT}:{key_part(qpu_id)}:*"


# -- jobs: claims, results, stream entries --


def claim_key(qpu_id: str, job_id: str) -> str:
    """Held (with a lease) by the one worker running a job."""
    return _key(qpu_id, "claim", job_id)


def job_key(qpu_id: str, job_id: str) -> str:
    """The job's one recorded result and its delivery mark."""
    return _key(qpu_id, "job", job_id)


def delivery_lease_key(qpu_id: str, job_id: str) -> str:
    """Held while one delivery of the job's result is in flight."""
    return f"{job_key(qpu_id, job_id)}:delivering"


def timeline_key(qpu_id: str, job_id: str) -> str:
    """What each step did to the job, when and where (see :mod:`~coda_bridge.pipeline.timeline`)."""
    return _key(qpu_id, "timeline", job_id)


def entry_key(qpu_id: str, entry_id: str) -> str:
    """Which broker message carries a cloud stream entry now (:mod:`~coda_bridge.queueing.entry_index`)."""
    return _key(qpu_id, "entry", entry_id)


def tick_key(qpu_id: str, name: str, slot: int) -> str:
    """Taken by the one ticker that sends tick ``slot`` of a periodic task."""
    return _key(qpu_id, "tick", name, slot)


# -- the node's shared state (see :mod:`~coda_bridge.state.node_state`) --


def node_key(qpu_id: str, name: str) -> str:
    """One record of the node's shared state, e.g. ``running`` or ``counters``."""
    return _key(qpu_id, "node", name)


def pause_key(qpu_id: str) -> str:
    """The node's pause (note, start, end), expiring at its end (:mod:`~coda_bridge.control.pause_book`)."""
    return node_key(qpu_id, "pause")


def device_key(qpu_id: str) -> str:
    """The device state its executor last reported, expiring unless a jobs worker keeps it fresh."""
    return node_key(qpu_id, "device")


def window_key(qpu_id: str, start: int) -> str:
    """Taken by the one jobs worker that opens the maintenance window starting at ``start`` (Unix seconds)."""
    return _key(qpu_id, "node", "window", start)


def histogram_key(qpu_id: str, name: str) -> str:
    """One histogram's buckets and sums (see :mod:`~coda_bridge.metrics.histograms`)."""
    return _key(qpu_id, "node", "histogram", name)


def dramatiq_counters_key(qpu_id: str) -> str:
    """dramatiq's Prometheus counters, summed over every worker of the QPU."""
    return _key(qpu_id, "node", "dramatiq", "counters")


def dramatiq_live_key(qpu_id: str, process_id: str) -> str:
    """The gauges of messages one worker process holds now (dropped with the process)."""
    return _key(qpu_id, "node", "dramatiq", "inprogress", process_id)


# -- the process registry (see :mod:`~coda_bridge.state.registry`) --


def process_key(qpu_id: str, host: str, pid: int | str, role: str) -> str:
    """The registration of one role of a process (``start --one-process`` runs every role in one)."""
    return _key(qpu_id, "process", host, pid, role)


def process_pattern(qpu_id: str) -> str:
    """A ``SCAN`` pattern matching every :func:`process_key` of a QPU."""
    return f"{_key(qpu_id, 'process')}:*"


def ready_key(qpu_id: str, host: str, pid: int | str) -> str:
    """Held by one process whose executor is built (a jobs worker, or a one-process node)."""
    return _key(qpu_id, "ready", host, pid)


def ready_pattern(qpu_id: str) -> str:
    """A ``SCAN`` pattern matching every :func:`ready_key` of a QPU."""
    return f"{_key(qpu_id, 'ready')}:*"


def ready_index_key(qpu_id: str) -> str:
    """The sorted set of a QPU's :func:`ready_key` names, scored by when each expires: read without a SCAN."""
    return node_key(qpu_id, "ready_workers")


def bridge_key(qpu_id: str, consumer: str) -> str:
    """Held by the one live bridge of a QPU with a given stream consumer name."""
    return _key(qpu_id, "bridge", consumer)


# -- dramatiq's keys, under the broker namespace --


def broker_namespace(qpu_id: str) -> str:
    """Every dramatiq key of one QPU lives under this prefix, so QPUs can share a Redis."""
    return _key(qpu_id, "dq")


def queue_key_prefix(namespace: str) -> str:
    """What every queue's keys start with: a queue's key is this and the queue's name."""
    return f"{namespace}:"


def queue_key(namespace: str, queue: str) -> str:
    """The list of a queue's waiting message ids (dramatiq's layout)."""
    return f"{queue_key_prefix(namespace)}{queue}"


def messages_key(namespace: str, queue: str) -> str:
    """The hash of a queue's message bodies by Redis message id (dramatiq's layout)."""
    return f"{queue_key(namespace, queue)}{MESSAGES_SUFFIX}"


def dead_queue_key(namespace: str, queue: str) -> str:
    """The sorted set of a queue's dead-lettered message ids, scored by death time in ms (dramatiq's)."""
    return f"{queue_key(namespace, queue)}{_DEAD_SUFFIX}"


def dead_messages_key(namespace: str, queue: str) -> str:
    """The hash of a queue's dead-lettered message bodies (dramatiq's layout)."""
    return f"{queue_key(namespace, queue)}{DEAD_MESSAGES_SUFFIX}"


def wake_key(namespace: str, queue: str) -> str:
    """The node's wake-up tokens of a queue: pushed on enqueue, blocked on by idle consumers."""
    return f"{queue_key(namespace, queue)}{_WAKE_SUFFIX}"


def heartbeats_key(namespace: str) -> str:
    """dramatiq's sorted set of worker heartbeats (broker id, scored by last beat in ms)."""
    return f"{queue_key_prefix(namespace)}{_HEARTBEATS}"


def acks_key_prefix(namespace: str) -> str:
    """What a worker's unacked set starts with; dramatiq appends ``{worker id}.{queue}``."""
    return f"{queue_key_prefix(namespace)}{_ACKS}"
