"""The simulator's state: QPUs, node tokens, jobs, recorded requests and faults.

All in memory behind one lock (waitress serves requests from a pool of threads);
tokens are kept only as SHA-256 hashes, so no listing can show one back.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .records import (
    FAULT_KINDS,
    OFFLINE_AFTER_SEC,
    TOKEN_ID_CHARS,
    TOKEN_REFUSALS,
    Fault,
    Job,
    NodeToken,
    Qpu,
    hash_token,
    token_id,
)

__all__ = [
    "FAULT_KINDS",
    "OFFLINE_AFTER_SEC",
    "Fault",
    "Job",
    "NodeToken",
    "Qpu",
    "Store",
    "StoreError",
    "TOKEN_ID_CHARS",
    "token_id",
]

#: Prefix of minted node tokens; no dots, so a token never looks like a JWT.
TOKEN_PREFIX = "cnt_"
#: Version of the ``--state-file`` JSON layout.
STATE_FORMAT_VERSION = 1


class StoreError(Exception):
    """A request the state cannot honour; ``status`` is the HTTP answer to give."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Store:
    """Thread-safe in-memory state of one simulated cloud."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._seq = itertools.count(1)
        self._fault_ids = itertools.count(1)
        self._last_key_ms = 0
        self.changes = 0
        self.qpus: dict[str, Qpu] = {}
        self.tokens: dict[str, NodeToken] = {}
        self.jobs: dict[str, Job] = {}
        self.faults: list[Fault] = []
        self.events: dict[str, list[dict[str, Any]]] = {"connect": [], "heartbeat": [], "webhook": []}

    # -- QPUs -------------------------------------------------------------

    def add_qpu(self, qpu: Qpu, *, replace: bool = False) -> Qpu:
        """Register a QPU; an existing one is only replaced (key and all) on request."""
        with self._lock:
            if qpu.qpu_id in self.qpus and not replace:
                raise StoreError(409, f"QPU {qpu.qpu_id!r} is already registered (pass replace to reset it)")
            self.qpus[qpu.qpu_id] = qpu
            self.changes += 1
            return qpu

    def get_qpu(self, qpu_id: str) -> Qpu | None:
        """A snapshot of one QPU, or ``None``."""
        with self._lock:
            qpu = self.qpus.get(qpu_id)
            return None if qpu is None else copy.deepcopy(qpu)

    def require_qpu(self, qpu_id: str) -> Qpu:
        """A snapshot of one QPU, or a 404."""
        qpu = self.get_qpu(qpu_id)
        if qpu is None:
            raise StoreError(404, f"QPU {qpu_id!r} is not registered")
        return qpu

    def list_qpus(self) -> list[Qpu]:
        """Snapshots of every QPU."""
        with self._lock:
            return [copy.deepcopy(q) for q in self.qpus.values()]

    def delete_qpu(self, qpu_id: str) -> bool:
        """Forget a QPU (its tokens stay, and now point nowhere)."""
        with self._lock:
            self.changes += 1
            return self.qpus.pop(qpu_id, None) is not None

    def next_key_id(self, qpu_id: str) -> str:
        """``qpu-{qpu_id}-{ms}``, strictly increasing so two provisionings never share a kid."""
        with self._lock:
            ms = max(int(time.time() * 1000), self._last_key_ms + 1)
            self._last_key_ms = ms
            return f"qpu-{qpu_id}-{ms}"

    def note_reconnect(self, qpu_id: str, connectivity: list[list[int]] | None) -> None:
        """Count an accepted reconnect, and keep the topology it reported."""
        with self._lock:
            qpu = self.qpus.get(qpu_id)
            if qpu is None:
                return
            qpu.connect_count += 1
            if connectivity is not None:
                qpu.connectivity = connectivity
            self.changes += 1

    def update_qpu(self, qpu_id: str, **changes: Any) -> None:
        """Set some attributes of a QPU, if it is still registered."""
        with self._lock:
            qpu = self.qpus.get(qpu_id)
            if qpu is None:
                return
            for name, value in changes.items():
                setattr(qpu, name, value)
            self.changes += 1

    # -- node tokens ------------------------------------------------------

    def mint_token(self, qpu_id: str, *, expires_in_sec: float | None = None) -> tuple[str, NodeToken]:
        """A fresh one-time token for a registered QPU; the plain token is returned only here."""
        with self._lock:
            if qpu_id not in self.qpus:
                raise StoreError(404, f"QPU {qpu_id!r} is not registered")
            token = TOKEN_PREFIX + secrets.token_urlsafe(24)
            now = time.time()
            record = NodeToken(
                token_hash=hash_token(token),
                qpu_id=qpu_id,
                created_at=now,
                expires_at=None if expires_in_sec is None else now + expires_in_sec,
            )
            self.tokens[record.token_hash] = record
            self.changes += 1
            return token, copy.copy(record)

    def _find_token(self, token: str | None, tid: str | None) -> NodeToken | None:
        if token is not None:
            return self.tokens.get(hash_token(token))
        matches = [t for h, t in self.tokens.items() if tid and h.startswith(tid)]
        return matches[0] if len(matches) == 1 else None

    def revoke_token(self, *, token: str | None = None, tid: str | None = None) -> NodeToken:
        """Revoke a token given by value or by its token id."""
        with self._lock:
            record = self._find_token(token, tid)
            if record is None:
                raise StoreError(404, "no such node token")
            if record.revoked_at is None:
                record.revoked_at = time.time()
            self.changes += 1
            return copy.copy(record)

    def list_tokens(self, qpu_id: str | None = None) -> list[NodeToken]:
        """Snapshots of the tokens (of one QPU)."""
        with self._lock:
            return [copy.copy(t) for t in self.tokens.values() if qpu_id in (None, t.qpu_id)]

    def check_token(self, token: str) -> str:
        """The QPU id a usable token is for; a 401 with the cloud's message otherwise."""
        with self._lock:
            record = self.tokens.get(hash_token(token))
            if record is None:
                raise StoreError(401, "QPU node token is invalid")
            state = record.state
            if state != "valid":
                raise StoreError(401, TOKEN_REFUSALS[state])
            return record.qpu_id

    def provision(
        self,
        token: str,
        *,
        fingerprint: str,
        key_id: str,
        public_key_pem: str,
        connectivity: list[list[int]] | None,
    ) -> Qpu:
        """Use up a token and store the new key and machine, atomically (one winner per token)."""
        with self._lock:
            qpu_id = self.check_token(token)
            qpu = self.qpus.get(qpu_id)
            if qpu is None:
                raise StoreError(409, f"QPU {qpu_id!r} is not registered")
            self.tokens[hash_token(token)].used_at = time.time()
            qpu.key_id = key_id
            qpu.public_key_pem = public_key_pem
            qpu.fingerprint = fingerprint
            qpu.provisioned_at = time.time()
            qpu.connect_count += 1
            if connectivity is not None:
                qpu.connectivity = connectivity
            self.changes += 1
            return copy.deepcopy(qpu)

    # -- jobs ---------------------------------------------------------------

    def add_jobs(self, jobs: Iterable[Job]) -> set[str]:
        """Record jobs about to be submitted; returns the ids that were new.

        Jobs are recorded before their XADD, so a result can never arrive
        for a job the simulator does not know yet.  A job id submitted again
        keeps its first record.
        """
        with self._lock:
            new: set[str] = set()
            for job in jobs:
                if job.job_id not in self.jobs:
                    self.jobs[job.job_id] = job
                    new.add(job.job_id)
            self.changes += 1
            return new

    def set_submitted(self, job_ids: Iterable[str], at: float) -> None:
        """Stamp the XADD time on jobs that have none yet."""
        with self._lock:
            for job_id in job_ids:
                job = self.jobs.get(job_id)
                if job is not None and job.submitted_at is None:
                    job.submitted_at = at

    def add_stream_ids(self, stream_ids: Mapping[str, str]) -> None:
        """Note the stream entry id each job got."""
        with self._lock:
            for job_id, stream_id in stream_ids.items():
                job = self.jobs.get(job_id)
                if job is not None:
                    job.stream_ids.append(stream_id)
            self.changes += 1

    def forget_jobs(self, job_ids: Iterable[str]) -> None:
        """Drop job records whose XADD failed (unless a result came meanwhile)."""
        with self._lock:
            for job_id in job_ids:
                job = self.jobs.get(job_id)
                if job is not None and not job.deliveries:
                    del self.jobs[job_id]

    def get_job(self, job_id: str, *, deep: bool = True) -> Job | None:
        """A snapshot of one job, or ``None``; a shallow one (for reading its settings) unless ``deep``."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            return copy.deepcopy(job) if deep else copy.copy(job)

    def job_views(
        self, qpu_id: str | None = None, *, full: bool = False, deliveries: bool = True
    ) -> list[dict[str, Any]]:
        """JSON views of the jobs (of one QPU), in submission order."""
        with self._lock:
            return [
                j.view(full=full, deliveries=deliveries)
                for j in self.jobs.values()
                if qpu_id in (None, j.qpu_id)
            ]

    def results(self, qpu_id: str | None = None) -> dict[str, dict[str, Any] | None]:
        """Job id to its first accepted result body, ``None`` while none arrived."""
        with self._lock:
            return {j.job_id: j.result for j in self.jobs.values() if qpu_id in (None, j.qpu_id)}

    def mark_cancel_requested(self, job_id: str) -> None:
        """Note that the cancel key was set for a job."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is not None and job.cancel_requested_at is None:
                job.cancel_requested_at = time.time()
                self.changes += 1

    def deliver(self, job: Job, delivery: dict[str, Any]) -> dict[str, Any]:
        """Record an accepted result; flags duplicates whose content differs from the first.

        ``job`` is registered first when the simulator did not submit it.
        """
        with self._lock:
            known = self.jobs.setdefault(job.job_id, job)
            delivery = dict(delivery, seq=next(self._seq), duplicate=bool(known.deliveries))
            delivery["content_mismatch"] = False
            if known.deliveries:
                first = known.deliveries[0]["body"]
                body = delivery["body"]
                if (first.get("status"), first.get("counts")) != (body.get("status"), body.get("counts")):
                    delivery["content_mismatch"] = True
                    known.content_mismatch = True
            known.deliveries.append(delivery)
            self.changes += 1
            return copy.deepcopy(delivery)

    # -- recorded requests -----------------------------------------------

    def record(self, kind: str, event: dict[str, Any]) -> dict[str, Any]:
        """Append one request of ``kind`` (connect, heartbeat, webhook) to its log."""
        with self._lock:
            event = dict(event, seq=next(self._seq))
            self.events[kind].append(event)
            if kind == "heartbeat" and event.get("accepted") and event.get("qpu_id") in self.qpus:
                self.qpus[event["qpu_id"]].last_heartbeat_at = event["received_at"]
            return event

    def list_events(self, kind: str, **where: Any) -> list[dict[str, Any]]:
        """Copies of the recorded requests of ``kind`` whose fields equal every non-None ``where``."""
        wanted = {k: v for k, v in where.items() if v is not None}
        with self._lock:
            return [
                copy.deepcopy(e) for e in self.events[kind] if all(e.get(k) == v for k, v in wanted.items())
            ]

    # -- faults -------------------------------------------------------------

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
        with self._lock:
            fault = Fault(
                fault_id=next(self._fault_ids),
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
        with self._lock:
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
        with self._lock:
            now = time.monotonic()
            self.faults = [f for f in self.faults if not f.expired(now)]
            return [copy.copy(f) for f in self.faults]

    def clear_faults(self) -> int:
        """Drop every fault; returns how many there were."""
        with self._lock:
            count = len(self.faults)
            self.faults.clear()
            return count

    # -- whole state ----------------------------------------------------------

    def reset(self) -> None:
        """Forget everything."""
        with self._lock:
            self.qpus.clear()
            self.tokens.clear()
            self.jobs.clear()
            self.faults.clear()
            for log in self.events.values():
                log.clear()
            self.changes += 1

    def snapshot(self) -> dict[str, Any]:
        """The durable part of the state (QPUs, tokens, jobs) as JSON-ready data."""
        with self._lock:
            return {
                "version": STATE_FORMAT_VERSION,
                "last_key_ms": self._last_key_ms,
                "qpus": [dataclasses.asdict(q) for q in self.qpus.values()],
                "tokens": [dataclasses.asdict(t) for t in self.tokens.values()],
                "jobs": [dataclasses.asdict(j) for j in self.jobs.values()],
            }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Load what :meth:`snapshot` produced, replacing the current state."""
        if data.get("version") != STATE_FORMAT_VERSION:
            raise StoreError(400, f"state format {data.get('version')!r} is not {STATE_FORMAT_VERSION}")
        with self._lock:
            self.reset()
            self._last_key_ms = int(data.get("last_key_ms", 0))
            for item in data.get("qpus", []):
                self.qpus[item["qpu_id"]] = Qpu(**item)
            for item in data.get("tokens", []):
                self.tokens[item["token_hash"]] = NodeToken(**item)
            for item in data.get("jobs", []):
                self.jobs[item["job_id"]] = Job(**item)

    def save(self, path: str) -> None:
        """Write :meth:`snapshot` to ``path`` atomically, mode 0600 (it holds public keys and hashes)."""
        text = json.dumps(self.snapshot(), indent=1, sort_keys=True)
        tmp = Path(f"{path}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        tmp.replace(path)

    def load(self, path: str) -> bool:
        """Read a state file written by :meth:`save`; ``False`` when there is none yet."""
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return False
        self.restore(data)
        return True
