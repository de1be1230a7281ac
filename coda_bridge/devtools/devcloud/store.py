"""The simulator's state: QPUs, node tokens, jobs, recorded requests and faults.

All in memory behind one lock (waitress serves requests from a pool of threads);
tokens are kept only as SHA-256 hashes, so no listing can show one back.
:class:`Store` holds every attribute and owns QPUs, tokens, recorded requests and
the state file; its job and fault methods come from :mod:`.ledger` and :mod:`.faults`.
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .cloud_records import (
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
from .faults import FaultWindows
from .ledger import JobLedger
from .store_error import StoreError

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


class Store(JobLedger, FaultWindows):
    """Thread-safe in-memory state of one simulated cloud."""

    def __init__(self, offline_after_sec: float = OFFLINE_AFTER_SEC) -> None:
        #: A QPU shows offline this long after its last accepted heartbeat.
        self.offline_after_sec = offline_after_sec
        #: Guards all of it, the job and fault parts included.
        self.lock = threading.RLock()
        #: One sequence for recorded requests and deliveries, so their order can be compared.
        self.seq = itertools.count(1)
        self.fault_ids = itertools.count(1)
        self._last_key_ms = 0
        self.changes = 0
        self.qpus: dict[str, Qpu] = {}
        self.tokens: dict[str, NodeToken] = {}
        self.jobs: dict[str, Job] = {}
        self.faults: list[Fault] = []
        self.events: dict[str, list[dict[str, Any]]] = {
            "connect": [],
            "heartbeat": [],
            "webhook": [],
            "protection": [],  # node API requests the deployment protection refused
        }

    # -- QPUs -------------------------------------------------------------

    def add_qpu(self, qpu: Qpu, *, replace: bool = False) -> Qpu:
        """Register a QPU; an existing one is only replaced (key and all) on request."""
        with self.lock:
            if qpu.qpu_id in self.qpus and not replace:
                raise StoreError(409, f"QPU {qpu.qpu_id!r} is already registered (pass replace to reset it)")
            self.qpus[qpu.qpu_id] = qpu
            self.changes += 1
            return qpu

    def get_qpu(self, qpu_id: str) -> Qpu | None:
        """A snapshot of one QPU, or ``None``."""
        with self.lock:
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
        with self.lock:
            return [copy.deepcopy(q) for q in self.qpus.values()]

    def delete_qpu(self, qpu_id: str) -> bool:
        """Forget a QPU (its tokens stay, and now point nowhere)."""
        with self.lock:
            self.changes += 1
            return self.qpus.pop(qpu_id, None) is not None

    def next_key_id(self, qpu_id: str) -> str:
        """``qpu-{qpu_id}-{ms}``, strictly increasing so two provisionings never share a kid."""
        with self.lock:
            ms = max(int(time.time() * 1000), self._last_key_ms + 1)
            self._last_key_ms = ms
            return f"qpu-{qpu_id}-{ms}"

    def note_reconnect(self, qpu_id: str, connectivity: list[list[int]] | None) -> None:
        """Count an accepted reconnect, and keep the topology it reported."""
        with self.lock:
            qpu = self.qpus.get(qpu_id)
            if qpu is None:
                return
            qpu.connect_count += 1
            if connectivity is not None:
                qpu.connectivity = connectivity
            self.changes += 1

    def update_qpu(self, qpu_id: str, **changes: Any) -> None:
        """Set some attributes of a QPU, if it is still registered."""
        with self.lock:
            qpu = self.qpus.get(qpu_id)
            if qpu is None:
                return
            for name, value in changes.items():
                setattr(qpu, name, value)
            self.changes += 1

    # -- node tokens ------------------------------------------------------

    def mint_token(self, qpu_id: str, *, expires_in_sec: float | None = None) -> tuple[str, NodeToken]:
        """A fresh one-time token for a registered QPU; the plain token is returned only here."""
        with self.lock:
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
        with self.lock:
            record = self._find_token(token, tid)
            if record is None:
                raise StoreError(404, "no such node token")
            if record.revoked_at is None:
                record.revoked_at = time.time()
            self.changes += 1
            return copy.copy(record)

    def list_tokens(self, qpu_id: str | None = None) -> list[NodeToken]:
        """Snapshots of the tokens (of one QPU)."""
        with self.lock:
            return [copy.copy(t) for t in self.tokens.values() if qpu_id in (None, t.qpu_id)]

    def check_token(self, token: str) -> str:
        """The QPU id a usable token is for; a 401 with the cloud's message otherwise."""
        with self.lock:
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
        with self.lock:
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

    # -- recorded requests -----------------------------------------------

    def record(self, kind: str, event: dict[str, Any]) -> dict[str, Any]:
        """Append one request of ``kind`` (connect, heartbeat, webhook, protection) to its log."""
        with self.lock:
            event = dict(event, seq=next(self.seq))
            self.events[kind].append(event)
            if kind == "heartbeat" and event.get("accepted") and event.get("qpu_id") in self.qpus:
                self.qpus[event["qpu_id"]].last_heartbeat_at = event["received_at"]
            return event

    def list_events(self, kind: str, **where: Any) -> list[dict[str, Any]]:
        """Copies of the recorded requests of ``kind`` whose fields equal every non-None ``where``."""
        wanted = {k: v for k, v in where.items() if v is not None}
        with self.lock:
            return [
                copy.deepcopy(e) for e in self.events[kind] if all(e.get(k) == v for k, v in wanted.items())
            ]

    # -- whole state ----------------------------------------------------------

    def reset(self) -> None:
        """Forget everything."""
        with self.lock:
            self.qpus.clear()
            self.tokens.clear()
            self.jobs.clear()
            self.faults.clear()
            for log in self.events.values():
                log.clear()
            self.changes += 1

    def snapshot(self) -> dict[str, Any]:
        """The durable part of the state (QPUs, tokens, jobs) as JSON-ready data."""
        with self.lock:
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
        with self.lock:
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
