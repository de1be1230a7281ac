"""Fault windows: the failures injected into node requests, and the budget each one has left.

:class:`FaultWindows` is part of :class:`~.store.Store`, which holds the state and the lock.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator

from .cloud_records import FAULT_KINDS, Fault
from .store_error import StoreError

__all__ = ["FaultWindows"]


class FaultWindows:
    """The store's fault methods; the store provides ``lock``, ``faults`` and ``fault_ids``."""

    lock: threading.RLock
    faults: list[Fault]
    fault_ids: Iterator[int]

    def add_fault(
        self,
        kind: str,
        status: int | None,
        *,
        seconds: float | None = None,
        count: int | None = None,
        job_id: str | None = None,
        qpu_id: str | None = None,
        delay_sec: float = 0.0,
        lost_response: bool = False,
    ) -> Fault:
        """Add a fault window; it needs an end: ``seconds`` or a request ``count``."""
        if kind not in FAULT_KINDS:
            raise StoreError(400, f"fault kind must be one of {', '.join(FAULT_KINDS)}")
        if seconds is None and count is None:
            raise StoreError(400, "a fault needs seconds or count")
        if status is None and delay_sec <= 0:
            raise StoreError(400, "a fault needs a status or a delay_sec")
        if lost_response and status is None:
            raise StoreError(400, "lost_response needs a status to answer with")
        with self.lock:
            fault = Fault(
                fault_id=next(self.fault_ids),
                kind=kind,
                status=status,
                until=None if seconds is None else time.monotonic() + seconds,
                remaining=count,
                job_id=job_id,
                qpu_id=qpu_id,
                delay_sec=delay_sec,
                lost_response=lost_response,
            )
            self.faults.append(fault)
            return copy.copy(fault)

    def take_fault(self, kind: str, *, job_id: str | None = None, qpu_id: str | None = None) -> Fault | None:
        """The first live fault matching a request, counting the request against its budget."""
        with self.lock:
            now = time.monotonic()
            self.faults = [f for f in self.faults if not f.expired(now)]
            for fault in self.faults:
                if fault.matches(kind, job_id, qpu_id):
                    fault.hits += 1
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return copy.copy(fault)
            return None

    def list_faults(self) -> list[Fault]:
        """Snapshots of the live faults."""
        with self.lock:
            now = time.monotonic()
            self.faults = [f for f in self.faults if not f.expired(now)]
            return [copy.copy(f) for f in self.faults]

    def clear_faults(self) -> int:
        """Drop every fault; returns how many there were."""
        with self.lock:
            count = len(self.faults)
            self.faults.clear()
            return count
