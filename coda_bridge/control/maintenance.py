"""Maintenance windows in a jobs worker: pause the node for the window, run the calibration hook once.

At a window's start one jobs worker (the first to take the window's key in
the broker) pauses the node until the window's end, waits for this
worker's running jobs to finish, and runs the hook: the executor's
``calibrate()`` when it has one, else ``calibration_command``; bounded by
``calibration_timeout_sec`` and logged with its outcome.  With
``maintenance_resume = "hook_end"`` the node resumes once the hook
succeeded; otherwise at the window's end.  ``coda-bridge resume`` ends the
window's pause early, and it is not set again within the same window.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import Middleware

from ..errors import CodaError
from ..executors.base import resolve_awaitable
from ..logs import mask
from ..queueing.queues import JOBS_QUEUE
from ..state.broker_keys import window_key
from .pause_book import PauseBook
from .windows import ActiveWindow, Window, active_window, parse_window

__all__ = ["MaintenanceWindows", "run_hook"]

logger = logging.getLogger(__name__)

#: How often the worker looks whether a window has begun.
WINDOW_CHECK_SEC = 1.0
#: Longest output of a calibration command quoted in the log.
OUTPUT_MAX_CHARS = 200


def run_hook(executor: Any, command: str | None, timeout_sec: float) -> tuple[bool, str]:
    """``executor.calibrate()``, else ``command``, for at most ``timeout_sec``: (succeeded, outcome)."""
    calibrate = getattr(executor, "calibrate", None)
    if callable(calibrate):
        return _call_bounded(calibrate, timeout_sec)
    if command:
        return _run_command(command, timeout_sec)
    return True, "no calibration hook (the executor has no calibrate(), no calibration_command is set)"


def _call_bounded(calibrate: Callable[[], Any], timeout_sec: float) -> tuple[bool, str]:
    outcome: list[tuple[bool, str]] = []

    def call() -> None:
        try:
            resolve_awaitable(calibrate(), timeout_sec=timeout_sec)
        except Exception as exc:  # the backend's own code
            outcome.append(
                (False, f"calibrate() failed: {type(exc).__name__}: {mask(str(exc))[:OUTPUT_MAX_CHARS]}")
            )
        else:
            outcome.append((True, "calibrate() finished"))

    thread = threading.Thread(target=call, name="coda-calibrate", daemon=True)
    thread.start()
    thread.join(timeout_sec)
    if not outcome:
        return False, f"calibrate() did not finish within {timeout_sec:g} s (left running; jobs stay held)"
    return outcome[0]


def _run_command(command: str, timeout_sec: float) -> tuple[bool, str]:
    argv = shlex.split(command)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_sec, check=False)
    except subprocess.TimeoutExpired:
        return False, f"calibration command {argv[0]} did not finish within {timeout_sec:g} s (killed)"
    except OSError as exc:
        return False, f"calibration command {argv[0]} cannot run: {exc.strerror or exc}"
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split())[-OUTPUT_MAX_CHARS:]
        return False, f"calibration command {argv[0]} exited {done.returncode}: {mask(tail)}"
    return True, f"calibration command {argv[0]} finished"


class MaintenanceWindows(Middleware):
    """In a jobs worker: watches the site's windows; opens each one once, node-wide."""

    def __init__(
        self,
        windows: Sequence[str],
        book: PauseBook,
        executor: Callable[[], Any],
        run_slots: Callable[[], threading.BoundedSemaphore],
        *,
        concurrency: int,
        command: str | None,
        timeout_sec: float,
        resume_after_hook: bool,
    ) -> None:
        self.windows: list[Window] = [parse_window(text) for text in windows]
        self.book = book
        self.executor = executor
        self.run_slots = run_slots
        self.concurrency = concurrency
        self.command = command
        self.timeout_sec = timeout_sec
        self.resume_after_hook = resume_after_hook
        self._stopping = threading.Event()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        only = worker.consumer_whitelist
        if self.windows and (not only or JOBS_QUEUE in only):
            threading.Thread(target=self._run, name="coda-maintenance", daemon=True).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.wait(WINDOW_CHECK_SEC):
            try:
                self.check()
            except redis.RedisError as exc:
                logger.warning("Maintenance windows not checked: the broker Redis does not answer (%s).", exc)
            except Exception:  # a dead thread would skip every later window
                logger.exception("Maintenance window check failed; going on.")

    def check(self, now: float | None = None) -> ActiveWindow | None:
        """Open the window in force, if no worker has yet; returns the window this call opened."""
        now = time.time() if now is None else now
        active = active_window(self.windows, now)
        if active is None:
            return None
        key = window_key(self.book.qpu_id, int(active.start))
        if not self.book.client.set(key, "1", nx=True, pxat=int(active.end * 1000) + 60_000):
            return None  # opened already (by this worker or another)
        note = f"maintenance window {active.window.text}"
        self.book.pause(active.end - now, note, now=now)
        logger.info("Maintenance window %s begins: the node is paused until its end.", active.window.text)
        self._calibrate(active, note)
        return active

    def _calibrate(self, active: ActiveWindow, note: str) -> None:
        slots = self.run_slots()
        taken = 0
        deadline = time.monotonic() + self.timeout_sec
        try:
            while taken < self.concurrency and slots.acquire(timeout=max(deadline - time.monotonic(), 0)):
                taken += 1
            if taken < self.concurrency:
                logger.error(
                    "Calibration of window %s skipped: jobs still ran after %g s.",
                    active.window.text,
                    self.timeout_sec,
                )
                return
            try:
                executor = self.executor()
            except CodaError as exc:
                logger.error("Calibration of window %s skipped: %s", active.window.text, exc)
                return
            started = time.monotonic()
            ok, outcome = run_hook(executor, self.command, max(deadline - time.monotonic(), 0.001))
            took = time.monotonic() - started
            log = logger.info if ok else logger.error
            log("Calibration of window %s: %s (%.1f s).", active.window.text, outcome, took)
        finally:
            for _ in range(taken):
                slots.release()
        if ok and self.resume_after_hook:
            current = self.book.current()
            if current is not None and current.note == note:
                self.book.resume()
                logger.info("Maintenance window %s: resumed after the calibration.", active.window.text)
