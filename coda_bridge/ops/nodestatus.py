"""What ``status`` says about the node, gathered once: as lines for a person, or one JSON object.

Whether it runs (and, when it does not, why it last stopped), whether it is
ready (its ``/ready``), the QPU, the executor, the age of the last accepted
heartbeat, the pause and the device state, the registered processes, the queues and dead letters, the VPN.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from ..control.pause_book import PauseBook
from ..identity.credentials import StatePaths
from ..queueing.broker_client import broker_client
from ..queueing.redis_broker import create_broker
from ..settings import Settings
from ..state.node_state import NodeState
from ..state.registry import live_processes
from .daemon import probe_ready, ready_url
from .doctor import PING_TIMEOUT_SEC, failure_reason
from .outcome import last_exit
from .pidfile import pid_file_for, running_pid

__all__ = ["node_status", "status_lines"]


def node_status(
    plain: Settings, node: Settings | None, problem: str | None = None, broker_problem: str | None = None
) -> dict[str, Any]:
    """Everything ``status`` shows.

    ``node`` is ``None`` when the node's settings do not load (``problem`` says why);
    ``broker_problem`` says why the broker cannot be asked (a malformed URL).
    """
    pid_file = pid_file_for(plain.state_dir)
    pid = running_pid(pid_file)
    log = StatePaths(Path(plain.state_dir)).daemon_log
    report: dict[str, Any] = {
        "state": "running" if pid else "stopped",
        "pid": pid,
        "pid_file": str(pid_file),
        "log_file": str(log) if log.exists() else None,
        "last_exit": None,
        "qpu": None,
        "problem": problem,
    }
    record = last_exit(plain.state_dir)
    if record is not None:
        report["last_exit"] = record.as_dict()
    if node is None:
        return report
    report["qpu"] = {"id": node.qpu_id, "display_name": node.qpu_display_name}
    report["executor"] = {"factory": node.executor_factory, "failure": None}  # why it cannot be built
    report["vpn"] = vpn_summary(node)
    if broker_problem:
        report["broker"] = f"unknown ({broker_problem})"
    elif node.qpu_id:
        lines, broken = process_lines(node)
        report["processes"] = lines
        report["broker"] = (broken or "ok").removeprefix("unknown (").removesuffix(")")
        if not broken:
            report.update(_broker_view(node))
            report["executor"]["failure"] = report.pop("executor_failure", None)
        if report["processes"] and not pid:
            report["state"] = "running elsewhere"  # not started by `coda-bridge start` here
    if pid or report["state"] != "stopped":
        ready, reason = probe_ready(ready_url(node.host, node.port))
        report["ready"] = {"ready": ready, "reason": reason if not ready else None}
    return report


def _broker_view(settings: Settings) -> dict[str, Any]:
    """Queue depths, dead letters, the executor's boot failure and the heartbeat age, from the broker."""
    broker = create_broker(settings)
    try:
        sizes = broker.queue_sizes()
        state = NodeState(broker.client, str(settings.qpu_id))
        failure = state.executor_failure()
        heartbeat = state.last_heartbeat_accepted()
        hold = PauseBook(broker.client, str(settings.qpu_id)).hold()
    except redis.RedisError as exc:
        return {"broker": f"error: {' '.join(str(exc).split())}"}
    finally:
        broker.close()
    return {
        "queues": {q: n for q, n in sizes.items() if not q.endswith(".dead")},
        "dead_letters": {q[:-5]: n for q, n in sizes.items() if q.endswith(".dead")},
        "heartbeat_age_sec": round(time.time() - heartbeat, 1) if heartbeat is not None else None,
        "executor_failure": failure["error"] if failure else None,
        "pause": hold.pause.as_dict() if hold.pause is not None else None,
        "device_state": hold.device.value if hold.device is not None else None,
    }


def process_lines(settings: Settings) -> tuple[list[str], str | None]:
    """One line per process registered for the QPU (any host, however started), and a problem if any."""
    if not settings.qpu_id:
        return [], None
    client = broker_client(
        settings.broker_url, socket_timeout=PING_TIMEOUT_SEC, socket_connect_timeout=PING_TIMEOUT_SEC
    )
    try:
        found = live_processes(client, settings.qpu_id)
    except (redis.RedisError, OSError) as exc:
        return [], f"unknown (broker unreachable: {failure_reason(exc)})"
    finally:
        client.close()
    width = max((len(info.role) for info in found), default=0)
    return [f"{info.role:<{width}}  {info.describe()}" for info in found], None


def vpn_summary(settings: Settings) -> str:
    """The tunnel interface, for ``status``."""
    if not settings.vpn_required:
        return "not required"
    try:
        from ..vpn.guard import tun_interfaces  # noqa: PLC0415 - status reports VPN support that cannot load
    except ImportError:
        return "required (the VPN support is not installed)"
    found = tun_interfaces(settings.vpn_interface_hint)
    return ", ".join(found) if found else "required, but no tunnel interface is up"


def status_lines(report: dict[str, Any]) -> list[str]:
    """``report`` for a person, one fact per line."""
    lines = [f"coda-bridge: {_state(report)}"]
    if "ready" in report:
        ready = report["ready"]
        lines.append(f"ready:       {'yes' if ready['ready'] else 'no: ' + (ready['reason'] or 'no answer')}")
    if report["problem"]:
        lines.append(f"qpu:         unknown ({report['problem']})")
    if report["qpu"] is not None:
        qpu = report["qpu"]
        shown = qpu["id"] or "not provisioned yet"
        lines.append(f"qpu:         {shown}" + (f" ({qpu['display_name']})" if qpu["display_name"] else ""))
        executor = report["executor"]["factory"] or "none configured"
        if report["executor"]["failure"]:
            executor += f" (cannot be built: {report['executor']['failure']})"
        lines.append(f"executor:    {executor}")
    if "heartbeat_age_sec" in report:
        age = report["heartbeat_age_sec"]
        lines.append(f"heartbeat:   {'none accepted yet' if age is None else f'accepted {age:g} s ago'}")
    if "pause" in report:
        pause = report["pause"]
        note = f" ({pause['note']})" if pause and pause["note"] else ""
        lines.append(f"paused:      {'no' if pause is None else 'until ' + pause['until'] + note}")
        lines.append(f"device:      {report['device_state'] or 'no state reported'}")
    if "processes" in report:
        processes = report["processes"] or ["none registered"]
        if report["broker"] != "ok":
            processes = [f"unknown ({report['broker']})"]
        lines.append(f"processes:   {processes[0]}")
        lines.extend(f"             {line}" for line in processes[1:])
    if report.get("broker", "ok") != "ok":
        lines.append(f"queues:      {report['broker']}")
    elif "queues" in report:
        waiting = ", ".join(f"{q} {n}" for q, n in report["queues"].items())
        dead = ", ".join(f"{q} {n}" for q, n in report["dead_letters"].items() if n) or "none"
        lines.append(f"queues:      {waiting} waiting")
        lines.append(f"dead letters: {dead}")
    if "vpn" in report:
        lines.append(f"vpn:         {report['vpn']}")
    log = report["log_file"] or "none (the node has not been started with --daemon here)"
    lines.append(f"log file:    {log}")
    return lines


def _state(report: dict[str, Any]) -> str:
    if report["state"] == "running":
        return f"running (pid {report['pid']})"
    if report["state"] == "running elsewhere":
        count = len(report.get("processes") or [])
        return f"running ({count} registered process(es), not started by `coda-bridge start` here)"
    record = report["last_exit"]
    if record is None:
        return "stopped"
    when, why = record["stopped_at_utc"], record["reason"]
    if record["code"] is None:
        return f"stopped (the run of pid {record['pid']} started at {when}: {why})"
    return f"stopped (last exit: code {record['code']} at {when}: {why})"
