"""What the broker Redis needs: a memory limit with room, and a policy that never evicts the node's keys.

The node's claims, records and entry index are what keep a job from
running twice; a policy that evicts (``allkeys-lru``, any ``volatile-*``:
those keys have expiries) drops them under pressure and jobs run twice.
``noeviction`` makes a full broker refuse writes instead, an outage the
node waits out (:mod:`~coda_bridge.queueing.refusal`).  ``doctor`` reads
these findings (docs/operations.md, "Sizing the broker").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MemoryFinding", "NEAR_FULL_FRACTION", "SAFE_POLICY", "memory_finding"]

#: Used memory past this fraction of ``maxmemory`` is worth a warning.
NEAR_FULL_FRACTION = 0.8
#: The only policy that never drops the node's keys.
SAFE_POLICY = "noeviction"


@dataclass(frozen=True)
class MemoryFinding:
    """One line about the broker's memory: ``warning`` when it needs a look, ``evicting`` when it must."""

    warning: bool
    detail: str
    evicting: bool = False


def memory_finding(info: Mapping[str, Any]) -> MemoryFinding:
    """What ``INFO memory`` of the broker says about its limit and policy."""
    policy = str(info.get("maxmemory_policy", "?"))
    limit = int(info.get("maxmemory", 0) or 0)
    used = int(info.get("used_memory", 0) or 0)
    usage = f"{info.get('used_memory_human', used)} used"
    if policy == "?":
        return MemoryFinding(
            True, f"the broker does not say its maxmemory-policy ({usage}); make it {SAFE_POLICY}"
        )
    if policy != SAFE_POLICY:
        return MemoryFinding(
            True,
            f"maxmemory-policy is {policy}: evicting drops the node's claims and records, so jobs can run "
            f"twice; set maxmemory-policy {SAFE_POLICY} ({usage})",
            evicting=True,
        )
    if limit == 0:
        return MemoryFinding(
            True,
            f"no maxmemory ({usage}): the broker can grow until the host runs out; "
            "set maxmemory as docs/operations.md sizes it",
        )
    shown = f"{usage} of maxmemory {info.get('maxmemory_human', limit)}, policy {policy}"
    if used >= NEAR_FULL_FRACTION * limit:
        return MemoryFinding(
            True,
            f"{shown}: near the limit, where it refuses writes and jobs wait; "
            "raise maxmemory or lower record_retention_sec",
        )
    return MemoryFinding(False, shown)
