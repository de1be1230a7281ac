"""A small client of the simulator's admin API, for tests, the demo and the CLI.

It speaks only the ``/devcloud`` admin routes; the node API is for the node.
The HTTP under it, and the :class:`DevCloudError` every refusal becomes, are in :mod:`.transport`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import requests

from .transport import AdminTransport, DevCloudError

__all__ = ["DevCloudClient", "DevCloudError"]

#: Poll interval of the ``wait_for_*`` helpers.
WAIT_POLL_SEC = 0.05


def _circuit_fields(ir: Any) -> dict[str, Any]:
    """``ir`` as a submit field: a mapping, an object with ``to_json()``, or raw JSON text."""
    if ir is None:
        return {}
    if isinstance(ir, str):
        return {"ir_json": ir}
    if isinstance(ir, Mapping):
        return {"ir": dict(ir)}
    to_json = getattr(ir, "to_json", None)
    if callable(to_json):
        return {"ir": json.loads(to_json())}
    raise TypeError(f"ir must be a mapping, a circuit with to_json() or JSON text, not {type(ir).__name__}")


class DevCloudClient(AdminTransport):
    """Admin client of one running simulator at ``base_url``."""

    def __repr__(self) -> str:
        return f"DevCloudClient({self.base_url!r})"

    # -- health and whole state ------------------------------------------------------

    def health(self) -> bool:
        """Whether the node API's health endpoint answers 200."""
        try:
            return requests.get(f"{self.base_url}/api/internal/qpu/health", timeout=self.timeout_sec).ok
        except requests.RequestException:
            return False

    def info(self) -> dict[str, Any]:
        """Base URL, API prefix, Redis URL and whether Redis answers."""
        result: dict[str, Any] = self.get("/devcloud")
        return result

    def reset(self, *, redis: bool = False) -> None:
        """Forget all state; ``redis`` also deletes the keys the simulator wrote."""
        self.post("/devcloud/reset", {"redis": redis})

    # -- QPUs and tokens -----------------------------------------------------------------

    def create_qpu(
        self,
        qpu_id: str,
        *,
        display_name: str | None = None,
        native_gate_set: str = "cz",
        num_qubits: int = 5,
        connection_mode: str = "https",
        vpn: Mapping[str, Any] | None = None,
        client_profile_ovpn: str | None = None,
        redis_url: str | None = None,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Register a QPU; returns its view."""
        body = {
            "qpu_id": qpu_id,
            "display_name": display_name,
            "native_gate_set": native_gate_set,
            "num_qubits": num_qubits,
            "connection_mode": connection_mode,
            "vpn": dict(vpn) if vpn else None,
            "client_profile_ovpn": client_profile_ovpn,
            "redis_url": redis_url,
            "replace": replace,
        }
        result: dict[str, Any] = self.post("/devcloud/qpus", body)
        return result

    def qpu(self, qpu_id: str) -> dict[str, Any]:
        """One QPU's view: key id, fingerprint, connectivity, last heartbeat, ``online``."""
        result: dict[str, Any] = self.get(f"/devcloud/qpus/{qpu_id}")
        return result

    def qpus(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/devcloud/qpus")["qpus"]
        return result

    def delete_qpu(self, qpu_id: str) -> bool:
        deleted: bool = self.request("DELETE", f"/devcloud/qpus/{qpu_id}")["deleted"]
        return deleted

    def mint_token(self, qpu_id: str, *, expires_in_sec: float | None = None) -> str:
        """A one-time node token (zero or negative ``expires_in_sec``: already expired)."""
        token: str = self.post("/devcloud/tokens", {"qpu_id": qpu_id, "expires_in_sec": expires_in_sec})[
            "token"
        ]
        return token

    def revoke_token(self, token: str) -> dict[str, Any]:
        result: dict[str, Any] = self.post("/devcloud/tokens/revoke", {"token": token})
        return result

    def tokens(self, qpu_id: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/devcloud/tokens", qpu_id=qpu_id)["tokens"]
        return result

    # -- jobs -------------------------------------------------------------------------------

    def submit(
        self,
        qpu_id: str,
        ir: Any = None,
        shots: int | str = 1000,
        *,
        ir_json: str | None = None,
        qasm: str | None = None,
        job_id: str | None = None,
        validate: bool | None = None,
        expect: Mapping[str, Any] | str | None = None,
        extra_fields: Mapping[str, Any] | None = None,
        omit_fields: Sequence[str] | None = None,
        callback_url: str | None = None,
    ) -> str:
        """XADD one job; returns its id.

        ``ir`` may be a mapping, a circuit with ``to_json()`` or JSON text
        (sent raw as ``ir_json``); ``expect`` may be ``"noop"``.
        """
        body = self._job_body(
            qpu_id,
            ir=ir,
            shots=shots,
            ir_json=ir_json,
            qasm=qasm,
            validate=validate,
            expect=expect,
            extra_fields=extra_fields,
            omit_fields=omit_fields,
        )
        body.update(job_id=job_id, callback_url=callback_url)
        job: str = self.post("/devcloud/jobs", body)["job_id"]
        return job

    def submit_bulk(
        self,
        qpu_id: str,
        count: int,
        ir: Any = None,
        shots: int | str = 1000,
        *,
        ir_json: str | None = None,
        qasm: str | None = None,
        validate: bool | None = None,
        expect: Mapping[str, Any] | str | None = None,
        job_id_prefix: str | None = None,
    ) -> list[str]:
        """XADD ``count`` copies of one circuit through pipelines; returns their ids in order."""
        body = self._job_body(
            qpu_id,
            ir=ir,
            shots=shots,
            ir_json=ir_json,
            qasm=qasm,
            validate=validate,
            expect=expect,
            extra_fields=None,
            omit_fields=None,
        )
        body.update(count=count, job_id_prefix=job_id_prefix)
        ids: list[str] = self.post("/devcloud/jobs/bulk", body)["job_ids"]
        return ids

    @staticmethod
    def _job_body(
        qpu_id: str,
        *,
        ir: Any,
        shots: int | str,
        ir_json: str | None,
        qasm: str | None,
        validate: bool | None,
        expect: Mapping[str, Any] | str | None,
        extra_fields: Mapping[str, Any] | None,
        omit_fields: Sequence[str] | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"qpu_id": qpu_id, "shots": shots, "ir_json": ir_json, "qasm": qasm}
        body.update(_circuit_fields(ir))
        body.update(
            validate=validate,
            expect=expect if isinstance(expect, str | None) else dict(expect),
            extra_fields=dict(extra_fields) if extra_fields else None,
            omit_fields=list(omit_fields) if omit_fields else None,
        )
        return body

    def cancel(self, job_id: str) -> None:
        """Set the cloud's cancel key for a job."""
        self.post(f"/devcloud/jobs/{job_id}/cancel")

    def job(self, job_id: str) -> dict[str, Any]:
        """One job: stream fields, deliveries, ``result``, and its Redis ``status`` hash."""
        result: dict[str, Any] = self.get(f"/devcloud/jobs/{job_id}")
        return result

    def jobs(self, qpu_id: str | None = None, *, full: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/devcloud/jobs", qpu_id=qpu_id, full=full or None)["jobs"]
        return result

    def result(self, job_id: str) -> dict[str, Any] | None:
        """The first accepted result body of a job, or ``None`` while none arrived."""
        body: dict[str, Any] | None = self.job(job_id)["result"]
        return body

    def results(self, qpu_id: str | None = None) -> dict[str, dict[str, Any] | None]:
        """Job id to its first accepted result body (``None`` while none arrived)."""
        result: dict[str, dict[str, Any] | None] = self.get("/devcloud/results", qpu_id=qpu_id)["results"]
        return result

    def stats(self, qpu_id: str | None = None) -> dict[str, Any]:
        """Totals, duplicates, mismatches and XADD-to-webhook latency percentiles."""
        result: dict[str, Any] = self.get("/devcloud/stats", qpu_id=qpu_id)
        return result

    # -- recorded requests ------------------------------------------------------------------

    def heartbeats(self, qpu_id: str | None = None, *, accepted: bool | None = None) -> list[dict[str, Any]]:
        """Every heartbeat request seen (``accepted`` filters), oldest first."""
        result: list[dict[str, Any]] = self.get("/devcloud/heartbeats", qpu_id=qpu_id, accepted=accepted)[
            "heartbeats"
        ]
        return result

    def webhooks(
        self, job_id: str | None = None, *, qpu_id: str | None = None, accepted: bool | None = None
    ) -> list[dict[str, Any]]:
        """Every webhook request seen (``accepted`` filters), oldest first."""
        params = {"job_id": job_id, "qpu_id": qpu_id, "accepted": accepted}
        result: list[dict[str, Any]] = self.get("/devcloud/webhooks", **params)["webhooks"]
        return result

    def connects(
        self, qpu_id: str | None = None, *, mode: str | None = None, accepted: bool | None = None
    ) -> list[dict[str, Any]]:
        """Every connect request seen (``mode`` is ``provision`` or ``reconnect``)."""
        result: list[dict[str, Any]] = self.get(
            "/devcloud/connects", qpu_id=qpu_id, mode=mode, accepted=accepted
        )["connects"]
        return result

    def refused(self) -> list[dict[str, Any]]:
        """Node API requests the deployment protection refused: method, path, names of missing headers."""
        result: list[dict[str, Any]] = self.get("/devcloud/refused")["refused"]
        return result

    # -- faults ---------------------------------------------------------------------------------

    def set_fault(
        self,
        kind: str,
        status: int | None,
        seconds: float | None = None,
        job_id: str | None = None,
        *,
        count: int | None = None,
        qpu_id: str | None = None,
        delay_sec: float | None = None,
        lost_response: bool = False,
    ) -> dict[str, Any]:
        """Answer ``status`` on ``kind`` requests (connect, heartbeat, webhook, health, all)
        for ``seconds`` or the next ``count`` of them; ``lost_response`` handles the request
        first and only replaces the answer."""
        body = {
            "kind": kind,
            "status": status,
            "seconds": seconds,
            "count": count,
            "job_id": job_id,
            "qpu_id": qpu_id,
            "delay_sec": delay_sec,
            "lost_response": lost_response,
        }
        result: dict[str, Any] = self.post("/devcloud/faults", body)
        return result

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/devcloud/faults")["faults"]
        return result

    def clear_faults(self) -> int:
        cleared: int = self.request("DELETE", "/devcloud/faults")["cleared"]
        return cleared

    # -- waiting --------------------------------------------------------------------------------

    def wait_for_result(self, job_id: str, timeout_sec: float = 10.0) -> dict[str, Any]:
        """The job's first result, polling until it arrives; :class:`TimeoutError` otherwise."""
        deadline = time.monotonic() + timeout_sec
        while True:
            result = self.result(job_id)
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no result for job {job_id} after {timeout_sec:g} s")
            time.sleep(WAIT_POLL_SEC)

    def wait_for_results(
        self, job_ids: Iterable[str], timeout_sec: float = 10.0
    ) -> dict[str, dict[str, Any]]:
        """The first results of all ``job_ids``, polling until every one arrived."""
        wanted = set(job_ids)
        deadline = time.monotonic() + timeout_sec
        while True:
            results = self.results()
            missing = {j for j in wanted if results.get(j) is None}
            if not missing:
                return {j: r for j, r in results.items() if j in wanted and r is not None}
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(missing)} of {len(wanted)} results missing after {timeout_sec:g} s")
            time.sleep(WAIT_POLL_SEC)

    def wait_for_heartbeats(
        self, qpu_id: str, count: int = 1, timeout_sec: float = 10.0
    ) -> list[dict[str, Any]]:
        """The accepted heartbeats of a QPU, once there are at least ``count``."""
        deadline = time.monotonic() + timeout_sec
        while True:
            beats = self.heartbeats(qpu_id, accepted=True)
            if len(beats) >= count:
                return beats
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(beats)} of {count} heartbeats from {qpu_id} after {timeout_sec:g} s"
                )
            time.sleep(WAIT_POLL_SEC)
