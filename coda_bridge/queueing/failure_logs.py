"""dramatiq's log lines about a message kept small: the message shown cut, once; each retry in one line.

dramatiq's worker logs the whole message (every field of every job it
carries) with a traceback each time an actor raises, so one 5 MB job
failing four times put 20 MB in the log.  :class:`SmallFailureLogs` puts
:class:`ShortMessages` on the worker's logger when a worker boots: a
message in a log line is shown as its actor, its id and its arguments cut
to :data:`MESSAGE_SHOWN_CHARS`; a failure of a retried message is one line
naming the exception, without the message or a traceback.  A broker that
refuses writes (OOM, READONLY, LOADING, MISCONF) is an expected outage, not
a failure: one WARNING line per outage names it, and what to do.
"""

from __future__ import annotations

import logging
import reprlib
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from .refusal import RefusalNotice, refusal, refusal_advice

__all__ = ["MESSAGE_SHOWN_CHARS", "ShortMessages", "SmallFailureLogs", "short_message"]

#: How much of a message's arguments a log line shows.
MESSAGE_SHOWN_CHARS = 300
#: How much of an exception's text the one line of a retried failure shows.
ERROR_SHOWN_CHARS = 300
#: The logger of dramatiq's worker threads, which logs failures with the message.
WORKER_LOGGER = "dramatiq.worker.WorkerThread"
#: The logger of a queue's consumer thread, which logs a failed acknowledgement with the message.
CONSUMER_LOGGER = "dramatiq.worker.ConsumerThread(%s)"

_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = 6
_REPR.maxlevel = 4


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def short_message(message: Message[Any] | MessageProxy) -> str:
    """``actor(args...)`` with the arguments cut, and the message id (never the whole message)."""
    args = ", ".join(_REPR.repr(arg) for arg in message.args)
    return f"{message.actor_name}({_cut(args, MESSAGE_SHOWN_CHARS)}) id {message.message_id}"


class ShortMessages(logging.Filter):
    """Shows the messages in a record cut; a retried message's failure becomes one line without it, and
    a broker's refusal of writes one WARNING line per outage (``notice`` tells which is the first)."""

    def __init__(self, notice: RefusalNotice | None = None) -> None:
        super().__init__()
        self.notice = notice or RefusalNotice()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        messages = [arg for arg in args if isinstance(arg, Message | MessageProxy)]
        if not messages:
            return True
        reason = _refusal_in(record)
        if reason is not None:
            if not self.notice.news():
                return False  # the same outage, said already
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.msg = (
                "Message %s waits: the local broker refuses writes: %s (%s); it is retried, or its stream "
                "entry is sent again by the reconciler, once writes pass."
            )
            record.args = (messages[0].message_id, _cut(reason, ERROR_SHOWN_CHARS), refusal_advice(reason))
            record.exc_info, record.exc_text = None, None
            return True
        retries = int(messages[0].options.get("retries") or 0)
        if retries and record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = "Message %s failed again (retry %d): %s"
            record.args = (
                messages[0].message_id,
                retries,
                _cut(f"{type(error).__name__}: {error}", ERROR_SHOWN_CHARS),
            )
            record.exc_info, record.exc_text = None, None
            return True
        record.args = tuple(
            short_message(arg) if isinstance(arg, Message | MessageProxy) else arg for arg in args
        )
        return True


def _refusal_in(record: logging.LogRecord) -> str | None:
    """The broker refusal a record of dramatiq's carries: its exception, or one in its arguments (a refused
    acknowledgement, which the broker hands dramatiq as a lost connection around the reply)."""
    args = record.args if isinstance(record.args, tuple) else ()
    errors = [record.exc_info[1]] if record.exc_info else []
    errors += [arg for arg in args if isinstance(arg, BaseException)]
    for error in errors:
        if error is None:
            continue
        reason = refusal(error) or refusal(getattr(error, "message", None) or error.__cause__ or error)
        if reason is not None:
            return reason
    return None


class SmallFailureLogs(Middleware):
    """Puts :class:`ShortMessages` on dramatiq's worker logger when a worker boots (once per process)."""

    def __init__(self, notice: RefusalNotice | None = None) -> None:
        self.notice = notice or RefusalNotice()

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        short = ShortMessages(self.notice)
        queues = broker.get_declared_queues() | broker.get_declared_delay_queues()
        names = [WORKER_LOGGER, *(CONSUMER_LOGGER % queue for queue in sorted(queues))]
        for name in names:
            named = logging.getLogger(name)
            for earlier in [f for f in named.filters if isinstance(f, ShortMessages)]:
                named.removeFilter(earlier)  # an earlier broker's (a test's): one outage, one notice
            named.addFilter(short)
