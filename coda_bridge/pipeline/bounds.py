"""What the bridge may hand the broker: entries checked at intake, and packed under a byte budget.

A job id that is not valid UTF-8 cannot be spoken back to the cloud as
sent (a webhook's JSON has no raw bytes, and decoding would merge ids), so
it is refused at intake: the bridge writes ``failed`` naming it to that
id's own status hash and acknowledges the entry.  A job whose fields are
larger than ``max_job_bytes`` goes on as a small stand-in (its id, its
callback and :data:`~coda_bridge.pipeline.checks.REFUSAL_FIELD`), which
the executor actor fails naming the size and the limit, so its result
takes the usual way: recorded, delivered, acknowledged.  Batches are
packed so that no broker message carries more than ``max_job_bytes`` of
fields, far under Redis's 512 MB limit on one value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import redis

from ..queueing.refusal import refusal
from .checks import REFUSAL_FIELD, shown

__all__ = [
    "BrokerServer",
    "Job",
    "Screened",
    "broker_refusal",
    "field_bytes",
    "pack",
    "round_trips",
    "screen",
    "stand_in",
]

logger = logging.getLogger(__name__)

#: Error replies that say something about the broker, not about the message that met them.
BROKER_STATE_ERRORS = (
    "OOM",
    "LOADING",
    "READONLY",
    "BUSY",
    "MASTERDOWN",
    "TRYAGAIN",
    "NOSCRIPT",
    "CLUSTERDOWN",
    "NOREPLICAS",
)
#: The fields a stand-in keeps: enough for a result to reach the cloud.
ADDRESS_FIELDS = ("job_id", "callback_url")


@dataclass(frozen=True)
class Job:
    """A stream entry ready to forward: its fields, its id and the size of its fields in bytes."""

    fields: dict[str, str]
    entry_id: str
    size: int


@dataclass
class Screened:
    """Entries sorted at intake: forward them, refuse them (job id, entry id, error), or drop them."""

    forward: list[Job] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _raw(text: str) -> bytes:
    """The bytes the cloud sent (the cloud's client decodes with ``surrogateescape``)."""
    return text.encode("utf-8", "surrogateescape")


def _cleaned(text: str) -> tuple[str, int]:
    """``text`` with bytes that are not UTF-8 replaced by U+FFFD, and its size as sent, in one pass."""
    if text.isascii():
        return text, len(text)
    raw = _raw(text)
    try:
        return raw.decode("utf-8"), len(raw)
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), len(raw)


def field_bytes(fields: Mapping[str, str]) -> int:
    """The size of an entry's fields as the cloud sent them, names included, in bytes."""
    return sum(_cleaned(name)[1] + _cleaned(value)[1] for name, value in fields.items())


def _mib(size: int) -> str:
    return f"{size / 1048576:.1f} MiB ({size} bytes)"


def stand_in(fields: Mapping[str, str], reason: str) -> dict[str, str]:
    """A job's id and callback with the reason it fails: what goes on instead of a job too large to carry."""
    kept = {name: fields[name] for name in ADDRESS_FIELDS if name in fields}
    return {**kept, REFUSAL_FIELD: reason}


def screen(entries: Iterable[tuple[dict[str, str], str]], limit_bytes: int) -> Screened:
    """Sort entries: refuse ids that are not UTF-8, stand in for jobs over ``limit_bytes``, forward the rest.

    Other fields that are not UTF-8 are decoded with replacement
    characters (U+FFFD), as before: an ``ir_json`` that then does not parse
    fails validation like any bad field.
    """
    screened = Screened()
    for fields, entry_id in entries:
        fields.pop(REFUSAL_FIELD, None)  # only the node sets it
        job_id = fields.get("job_id")
        if job_id and not _utf8(job_id):
            error = f"Job id {shown(repr(_raw(job_id)))} is not valid UTF-8; the job was refused"
            screened.refused.append((job_id, entry_id, error))
            continue
        clean: dict[str, str] = {}
        size = 0
        for name, value in fields.items():
            (clean_name, name_bytes), (clean_value, value_bytes) = _cleaned(name), _cleaned(value)
            clean[clean_name] = clean_value
            size += name_bytes + value_bytes
        if size <= limit_bytes:
            screened.forward.append(Job(clean, entry_id, size))
            continue
        reason = f"Job is {_mib(size)}, over the limit of {_mib(limit_bytes)} (max_job_bytes)"
        small = stand_in(clean, reason)
        if field_bytes(small) > limit_bytes:  # its id or callback alone is too large to report
            screened.dropped.append(entry_id)
        else:
            screened.forward.append(Job(small, entry_id, field_bytes(small)))
    return screened


def pack(jobs: Sequence[Job], batch_size: int, budget_bytes: int) -> list[list[Job]]:
    """Consecutive groups of at most ``batch_size`` jobs and ``budget_bytes`` of fields (or one job)."""
    groups: list[list[Job]] = []
    current: list[Job] = []
    used = 0
    for job in jobs:
        if current and (len(current) >= batch_size or used + job.size > budget_bytes):
            groups.append(current)
            current, used = [], 0
        current.append(job)
        used += job.size
    if current:
        groups.append(current)
    return groups


def round_trips(groups: Sequence[list[Job]], budget_bytes: int) -> list[list[list[Job]]]:
    """Consecutive runs of message groups that one enqueue round trip carries: at most ``budget_bytes``."""
    runs: list[list[list[Job]]] = []
    used = 0
    for group in groups:
        size = sum(job.size for job in group)
        if not runs or used + size > budget_bytes:
            runs.append([])
            used = 0
        runs[-1].append(group)
        used += size
    return runs


def broker_refusal(exc: redis.RedisError, broker_answers: bool) -> bool:
    """Whether a failed write was refused for its message rather than lost to an outage.

    An error reply about the message (``string exceeds maximum allowed
    size``, say) is; one about the broker's state (``OOM``, ``LOADING``...)
    is not.  A dropped connection is the message's doing only when the
    same broker server answers right after (``Protocol error: invalid bulk
    length`` closes the connection; see :class:`BrokerServer`, as a server
    restarted or failed over meanwhile also answers); a timeout never is (a broker that refuses a
    message says so at once): it answering right after only means that it
    came back from a stall just then.
    """
    if isinstance(exc, redis.TimeoutError):
        return False
    if isinstance(exc, redis.ConnectionError):
        return broker_answers
    if isinstance(exc, redis.ResponseError):
        if refusal(exc) is not None:  # OOM & co., also inside dramatiq's Lua enqueue on Redis 6.2
            return False
        reply = str(exc).rpartition("caused error: ")[2]  # a pipeline's error names its command first
        return not reply.upper().startswith(BROKER_STATE_ERRORS)
    return False


class BrokerServer:
    """Which broker server answers, by its run_id: a write that failed and is answered right after by
    another server (restarted, failed over) met an outage; only the same server refused the message.

    A broker that answers but refuses INFO (``rename-command``, an ACL) cannot tell its run_id: it is
    :data:`UNNAMED`, and any server answering counts as the same one, so a refused message still fails
    only its job instead of stalling intake (a restart under a write may then fail that job too).
    """

    #: The run_id of a server that answers but will not say it.
    UNNAMED = "(INFO refused)"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.run_id: str | None = None
        self._unnamed_said = False

    def now(self) -> str | None:
        """The run_id of the server that answers now (and remembered); ``None`` when none does."""
        try:
            info: dict[str, object] = self.client.info("server")
        except redis.ResponseError as exc:  # it answers, but INFO is renamed away or denied
            self._say_unnamed(exc)
            info = {"run_id": self.UNNAMED}
        except redis.RedisError:
            info = {}
        before, self.run_id = self.run_id, str(info.get("run_id") or "") or None
        return before

    def same_answers(self) -> bool:
        """Whether a server answers now, and is the one that answered when last asked; unknown then (the
        broker did not answer) is not the same: the write's failure is an outage, and the next ask knows."""
        before = self.now()
        return self.run_id is not None and before == self.run_id

    def _say_unnamed(self, exc: redis.ResponseError) -> None:
        if not self._unnamed_said:
            self._unnamed_said = True
            logger.warning(
                "The broker Redis refuses INFO (%s): a broker restart or failover under a write cannot be "
                "told from a refused message, and may fail that job; allow INFO for the node's user.",
                shown(str(exc), 120),
            )
