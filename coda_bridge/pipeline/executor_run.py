"""One executor call in a child process of the worker, as the actor thread watches it.

A call is sent to a child (or queued behind the run in a busy one, the
lane), answered, withdrawn, cancelled, or its child killed past its grace;
the child goes back to the host's processes or is discarded with it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..executors.host import ExecutorHost
from ..executors.isolation import Answer, Died, ExecutorProcess, describe_error

__all__ = ["STOP_POLL_SEC", "ExecutorRun"]

logger = logging.getLogger(__name__)

#: How often a run that was asked to stop is looked at during its grace.
STOP_POLL_SEC = 0.05


class ExecutorRun:
    """One executor call in a child process (:mod:`~coda_bridge.executors.isolation`), watched by the actor.

    A run takes one of the host's executor slots first, and gives it back
    only once its child answered, died or was killed, so an abandoned run
    never runs beside the next one.
    """

    def __init__(self, host: ExecutorHost, method: str, *args: Any) -> None:
        self.processes = host.processes
        self.method, self.args = method, args
        self.done = False
        self.result: Any = None
        self.error: str | None = None
        #: How the child died during the call (``signal 11 (SIGSEGV)``), if it did.
        self.died: str | None = None
        self._child: ExecutorProcess | None = None
        self._tag: int | None = None

    def queue(self, child: ExecutorProcess) -> bool:
        """Queue the call behind the run on ``child`` (from ``queue_behind``); False if the child is gone."""
        try:
            self._tag = child.call(self.method, *self.args, notify=True)
        except (OSError, ValueError):  # a broken pipe: the child is gone, and its run with it
            self.processes.discard(child)
            return False
        except Exception:  # a call that cannot be pickled: the usual start says so, in a run of its own
            self.processes.give_back(child)
            return False
        self._child = child
        return True

    def started(self, timeout: float) -> bool | None:
        """True once the child started the queued call; None when it never will (withdrawn, child died)."""
        assert self._child is not None and self._tag is not None
        answer = self._child.started(self._tag, timeout)
        if answer is True or answer is False:
            return answer
        self._never_started(answer)
        return None

    def withdraw(self) -> bool:
        """Take the queued call back before it starts; False when it had started (it is a run now)."""
        assert self._child is not None and self._tag is not None
        self._child.withdraw(self._tag)
        while (answer := self._child.started(self._tag, STOP_POLL_SEC)) is False:
            pass
        if answer is True:
            return False
        self._never_started(answer)
        return True

    def _never_started(self, answer: Answer | Died) -> None:
        child, self._child = self._child, None
        assert child is not None
        if isinstance(answer, Died):
            self.processes.discard(child)
        else:
            self.processes.give_back(child)

    def start(self) -> None:
        """Send the call to a child; one that died while idle (a broken pipe) gives way to a fresh one."""
        broken: Exception | None = None
        for _ in range(2):
            try:
                child = self.processes.take()
            except OSError as exc:  # no fork: out of memory or processes
                self._failed(f"the executor's process could not be started: {describe_error(exc)}")
                return
            try:
                self._tag = child.call(self.method, *self.args)
            except (OSError, ValueError) as exc:
                broken = exc
                self.processes.discard(child)
                continue
            except Exception as exc:  # the call cannot be pickled: this job's failure, the child is fine
                self.processes.give_back(child)
                self._failed(f"the job could not be sent to the executor's process: {describe_error(exc)}")
                return
            self._child = child
            return
        self._failed(f"the executor's process could not be reached: {describe_error(broken or OSError())}")

    def _failed(self, error: str) -> None:
        self.done, self.error = True, error

    def join(self, timeout: float) -> None:
        if self.done or self._child is None:
            return
        answer = self._child.reply(timeout, self._tag)
        if answer is not None:
            self._ended(answer)

    def is_alive(self) -> bool:
        return not self.done

    def stop(self, grace_sec: float) -> bool:
        """Ask the run to stop (``cancel_current_job()``); its child is killed if it runs past the grace.

        True when it was killed.
        """
        self.join(0)  # an answer already waiting: the run ended, and the idle child gets no cancel
        if self.done or self._child is None:
            return False
        self._child.cancel(self._tag)
        deadline = time.monotonic() + grace_sec
        while not self.done and time.monotonic() < deadline:
            self.join(min(deadline - time.monotonic(), STOP_POLL_SEC))
        if not self.done:
            child, self._child, self.done = self._child, None, True
            how = self.processes.discard(child)
            logger.warning(
                "The executor's run did not stop within %g s of its cancel; its process was killed (%s) "
                "and the next run gets a fresh one.",
                grace_sec,
                how,
            )
            return True
        return False

    def _ended(self, answer: tuple[str, Any] | Died) -> None:
        child, self._child, self.done = self._child, None, True
        assert child is not None
        if isinstance(answer, Died):
            self.died = answer.how
            self.processes.discard(child)
            return
        self.processes.give_back(child)
        if answer[0] == "ok":
            self.result = answer[1]
        else:
            self.error = str(answer[1])
