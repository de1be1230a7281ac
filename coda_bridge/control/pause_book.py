"""The node's pause and its device state: node state in the broker Redis, obeyed by every process.

A pause is one key that expires at the pause's end, so the node resumes by
itself, on every host, after any restart.  The device state is what a jobs
worker last read from its executor's ``status()``; it expires unless a
worker keeps it fresh, so a stopped worker leaves no stale ``calibration``
behind.  While either holds, the bridge reads no new stream entry and the
jobs workers start no job (:mod:`~coda_bridge.control.hold`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import redis

from ..device import DeviceState
from ..errors import ConfigError
from ..replies import as_text
from ..state.broker_keys import device_key, pause_key
from ..state.node_state import utc_iso

__all__ = [
    "DEFAULT_PAUSE_SEC",
    "MAX_PAUSE_SEC",
    "NodeHold",
    "Pause",
    "PauseBook",
    "parse_duration",
]

#: A pause without ``--for`` lasts this long (as buildkite-agent's).
DEFAULT_PAUSE_SEC = 5 * 60.0
#: The longest pause (as buildkite-agent's): a forgotten pause ends within a week.
MAX_PAUSE_SEC = 7 * 86_400.0
#: Longest note kept with a pause.
NOTE_MAX_CHARS = 200

_UNITS_SEC = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """``20s``, ``5m``, ``2h``, ``7d`` (a bare number is seconds) in seconds; at most 7 days."""
    match = _DURATION.match(text.lower())
    if not match:
        raise ConfigError(f"duration {text!r} is not valid: use a number with s, m, h or d (20s, 5m, 2h, 7d)")
    seconds = float(match.group(1)) * _UNITS_SEC[match.group(2) or "s"]
    if seconds <= 0:
        raise ConfigError(f"duration {text!r} is not valid: it must be longer than 0 s")
    if seconds > MAX_PAUSE_SEC:
        raise ConfigError(f"duration {text!r} is too long: a pause lasts at most 7 days (7d)")
    return seconds


@dataclass(frozen=True)
class Pause:
    """A pause in force: when it began and ends (Unix seconds), and the operator's note."""

    since: float
    until: float
    note: str

    def as_dict(self) -> dict[str, Any]:
        return {"since": utc_iso(self.since), "until": utc_iso(self.until), "note": self.note}

    def describe(self) -> str:
        note = f": {self.note}" if self.note else ""
        return f"paused until {utc_iso(self.until)}{note}"


class PauseBook:
    """Sets, ends and reads one QPU's pause and device state (one round trip each)."""

    def __init__(self, client: redis.Redis, qpu_id: str) -> None:
        self.client = client
        self.qpu_id = qpu_id

    def pause(self, duration_sec: float, note: str = "", now: float | None = None) -> Pause:
        """Pause for ``duration_sec`` from now (replacing any pause in force)."""
        since = time.time() if now is None else now
        record = Pause(since, since + duration_sec, " ".join(note.split())[:NOTE_MAX_CHARS])
        value = json.dumps({"since": record.since, "until": record.until, "note": record.note})
        self.client.set(pause_key(self.qpu_id), value, px=max(int(duration_sec * 1000), 1))
        return record

    def resume(self) -> bool:
        """End the pause; True when one was in force."""
        return bool(self.client.delete(pause_key(self.qpu_id)))

    def current(self) -> Pause | None:
        """The pause in force, or ``None``."""
        return _pause(self.client.get(pause_key(self.qpu_id)))

    def set_device_state(self, state: DeviceState, ttl_sec: float) -> None:
        self.client.set(device_key(self.qpu_id), state.value, px=max(int(ttl_sec * 1000), 1))

    def device_state(self) -> DeviceState | None:
        """The state a jobs worker reported lately; ``None``: no ``status()``, or no fresh report."""
        return _device(self.client.get(device_key(self.qpu_id)))

    def hold(self) -> NodeHold:
        """The pause and the device state together, in one round trip."""
        pause, device = self.client.mget([pause_key(self.qpu_id), device_key(self.qpu_id)])
        return NodeHold(_pause(pause), _device(device))


@dataclass(frozen=True)
class NodeHold:
    """What keeps the node from taking jobs, if anything: a pause, a device not ready."""

    pause: Pause | None
    device: DeviceState | None

    @property
    def reason(self) -> str | None:
        """One line saying why no job is taken, or ``None`` when jobs may start."""
        if self.pause is not None:
            return f"the node is {self.pause.describe()}"
        if self.device is not None and not self.device.takes_jobs:
            return f"the device reports {self.device.value}"
        return None


def _pause(value: Any) -> Pause | None:
    if value is None:
        return None
    try:
        record = json.loads(value)
        pause = Pause(float(record["since"]), float(record["until"]), str(record.get("note") or ""))
    except (ValueError, KeyError, TypeError):
        # unreadable, yet set on purpose: held, with no end known beyond the key's own expiry
        return Pause(0.0, 0.0, f"unreadable pause record {str(as_text(value))[:50]!r}")
    return pause if pause.until > time.time() else None


def _device(value: Any) -> DeviceState | None:
    if value is None:
        return None
    try:
        return DeviceState(str(as_text(value)))
    except ValueError:
        return DeviceState.ERROR
