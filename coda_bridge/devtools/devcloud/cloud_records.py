"""The records the simulated cloud keeps: QPUs, node tokens, jobs and faults.

Plain dataclasses with the admin API's JSON view of each, kept apart from
:mod:`.store` (and its parts :mod:`.ledger` and :mod:`.faults`), which own
the lock, the bookkeeping and the state file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FAULT_KINDS",
    "OFFLINE_AFTER_SEC",
    "TOKEN_ID_CHARS",
    "TOKEN_REFUSALS",
    "Fault",
    "Job",
    "NodeToken",
    "Qpu",
    "hash_token",
    "token_id",
]

#: The cloud marks a QPU offline after this long without an accepted heartbeat.
OFFLINE_AFTER_SEC = 90.0
#: Request kinds a fault can target; ``all`` targets every one of them.
FAULT_KINDS = ("connect", "heartbeat", "webhook", "health", "all")
#: Length of the public token id (a SHA-256 hex prefix) shown in listings.
TOKEN_ID_CHARS = 12


def token_id(token: str) -> str:
    """The public name of a token: a hash prefix, safe to list and log."""
    return hashlib.sha256(token.encode()).hexdigest()[:TOKEN_ID_CHARS]


def hash_token(token: str) -> str:
    """The full SHA-256 of a token: the only form in which tokens are kept."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclasses.dataclass
class Qpu:
    """A registered QPU and, once provisioned, its key and machine."""

    qpu_id: str
    display_name: str
    native_gate_set: str = "cz"
    num_qubits: int = 5
    connection_mode: str = "https"
    vpn: dict[str, Any] = dataclasses.field(default_factory=dict)
    redis_url: str | None = None
    created_at: float = dataclasses.field(default_factory=time.time)
    key_id: str | None = None
    public_key_pem: str | None = None
    fingerprint: str | None = None
    provisioned_at: float | None = None
    connect_count: int = 0
    connectivity: list[list[int]] | None = None
    last_heartbeat_at: float | None = None

    def view(self, offline_after_sec: float = OFFLINE_AFTER_SEC) -> dict[str, Any]:
        """The admin API's JSON view; ``online`` while the last heartbeat is younger than the threshold."""
        data = dataclasses.asdict(self)
        data["provisioned"] = self.public_key_pem is not None
        data["online"] = (
            self.last_heartbeat_at is not None and time.time() - self.last_heartbeat_at < offline_after_sec
        )
        return data


@dataclasses.dataclass
class NodeToken:
    """A one-time provisioning token, known by its hash only."""

    token_hash: str
    qpu_id: str
    created_at: float
    expires_at: float | None = None
    used_at: float | None = None
    revoked_at: float | None = None

    @property
    def state(self) -> str:
        """``revoked``, ``used``, ``expired`` or ``valid``, in the order the cloud checks them."""
        if self.revoked_at is not None:
            return "revoked"
        if self.used_at is not None:
            return "used"
        if self.expires_at is not None and time.time() >= self.expires_at:
            return "expired"
        return "valid"

    def view(self) -> dict[str, Any]:
        """The admin API's JSON view (never the token itself)."""
        return {
            "token_id": self.token_hash[:TOKEN_ID_CHARS],
            "qpu_id": self.qpu_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "used_at": self.used_at,
            "revoked_at": self.revoked_at,
            "state": self.state,
        }


#: The 401 message the cloud gives for each unusable token state.
TOKEN_REFUSALS = {
    "used": "QPU node token has already been used",
    "revoked": "QPU node token has been revoked",
    "expired": "QPU node token has expired",
}


@dataclasses.dataclass
class Job:
    """A job the simulator put on a stream, and the results it got back."""

    job_id: str
    qpu_id: str
    callback_url: str
    fields: dict[str, str]
    submitted_at: float | None
    stream_ids: list[str] = dataclasses.field(default_factory=list)
    expect: dict[str, Any] | None = None
    measurements: int | None = None
    deliveries: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    content_mismatch: bool = False
    cancel_requested_at: float | None = None

    @property
    def result(self) -> dict[str, Any] | None:
        """The body of the first accepted delivery."""
        return self.deliveries[0]["body"] if self.deliveries else None

    def view(self, *, full: bool = True, deliveries: bool = True) -> dict[str, Any]:
        """The admin API's JSON view; ``full`` adds the stream fields, ``deliveries`` every delivery.

        Delivery records are never changed once stored, so the view shares them.
        """
        first = self.deliveries[0] if self.deliveries else None
        expect_ok: bool | None = None
        if self.expect is not None and self.deliveries:
            expect_ok = not any(d["expect_problems"] for d in self.deliveries)
        data: dict[str, Any] = {
            "job_id": self.job_id,
            "qpu_id": self.qpu_id,
            "callback_url": self.callback_url,
            "stream_key": f"qpu:{self.qpu_id}:jobs",
            "stream_ids": list(self.stream_ids),
            "submitted_at": self.submitted_at,
            "expect": self.expect,
            "result": first["body"] if first else None,
            "delivered": first is not None,
            "delivery_count": len(self.deliveries),
            "first_delivery_at": first["received_at"] if first else None,
            "latency_ms": _latency_ms(self.submitted_at, first),
            "content_mismatch": self.content_mismatch,
            "expect_ok": expect_ok,
            "cancel_requested_at": self.cancel_requested_at,
        }
        if deliveries:
            data["deliveries"] = list(self.deliveries)
        if full:
            data["fields"] = dict(self.fields)
        return data


def _latency_ms(submitted_at: float | None, delivery: Mapping[str, Any] | None) -> float | None:
    if submitted_at is None or delivery is None:
        return None
    return round((float(delivery["received_at"]) - submitted_at) * 1000.0, 3)


@dataclasses.dataclass
class Fault:
    """An injected failure: answer ``status`` (and/or wait ``delay_sec``) on matching requests.

    It ends when ``until`` (monotonic seconds) passes or after ``remaining``
    matching requests.  With ``lost_response`` the request is handled and
    recorded first, and only the answer is replaced, as when a reply is lost.
    """

    fault_id: int
    kind: str
    status: int | None
    until: float | None = None
    remaining: int | None = None
    job_id: str | None = None
    qpu_id: str | None = None
    delay_sec: float = 0.0
    lost_response: bool = False
    hits: int = 0

    def matches(self, kind: str, job_id: str | None, qpu_id: str | None) -> bool:
        """Whether this fault applies to one request."""
        if self.kind not in ("all", kind):
            return False
        if self.job_id is not None and self.job_id != job_id:
            return False
        return self.qpu_id is None or self.qpu_id == qpu_id

    def expired(self, now_monotonic: float) -> bool:
        """Whether its time or request budget is spent."""
        if self.until is not None and now_monotonic >= self.until:
            return True
        return self.remaining is not None and self.remaining <= 0

    def view(self) -> dict[str, Any]:
        """The admin API's JSON view, with the seconds left instead of a clock value."""
        data = dataclasses.asdict(self)
        until = data.pop("until")
        data["seconds_left"] = None if until is None else max(0.0, round(until - time.monotonic(), 3))
        return data
