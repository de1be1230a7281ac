"""``job JOB_ID``: what the node did to one job, step by step, from its timeline in the broker.

Read-only, and from any host that reaches the broker, whether the node runs
or not.  The events are written by the pipeline steps
(:mod:`~coda_bridge.pipeline.timeline`); they are kept for
``record_retention_sec`` after the job's last event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import click

from ..errors import CodaError, ConfigError
from .options import check_redis_urls, node_settings, redis_errors, site_option

__all__ = ["describe", "job"]


class UnknownJob(CodaError):
    """The broker holds no timeline of the job: never seen by this node, or older than its retention."""


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: the job, its events, their fields.")
@site_option
def job(job_id: str, as_json: bool, site: str | None) -> None:
    """Show a job's timeline: read, queued, each run and delivery attempt with its answer, acknowledged.

    \b
    Examples:
      coda-bridge job 3f2a9c
      coda-bridge job 3f2a9c --json | jq '.events[] | select(.event == "delivery")'
    """
    from ..components import NodeComponents  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    from ..pipeline.timeline import Timeline, job_id_problem  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    problem = job_id_problem(job_id)
    if problem is not None:
        raise click.BadParameter(problem, param_hint="JOB_ID")
    settings = node_settings(site)
    check_redis_urls(settings, ("broker_url",))
    if not settings.qpu_id:
        raise ConfigError("the node has no QPU id yet: start it once with its token; it has run no job")
    client = NodeComponents(settings, signs=False).local_redis
    timeline = Timeline(client, settings.qpu_id, retention_sec=settings.record_retention_sec)
    try:
        with redis_errors("the broker", settings.broker_url):
            events = timeline.read(job_id)
            expires_in = timeline.expires_in(job_id)
    finally:
        client.close()
    if not events:
        days = settings.record_retention_sec / 86_400
        raise UnknownJob(
            f"no timeline for job {job_id} on QPU {settings.qpu_id}: this node never read it, or its "
            f"record is older than record_retention_sec ({days:g} days)"
        )
    if as_json:
        document = {
            "job_id": job_id,
            "qpu_id": settings.qpu_id,
            "expires_in_sec": expires_in,
            "events": events,
        }
        click.echo(json.dumps(document, sort_keys=True, ensure_ascii=True))
        return
    kept = "kept until its dead letter is replayed" if expires_in is None else f"kept {_duration(expires_in)}"
    click.echo(f"Job {job_id} on QPU {settings.qpu_id} ({len(events)} events, {kept})")
    for line in describe(events):
        click.echo(line)


def describe(events: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per event: UTC time, event, what happened, and where (host and process)."""
    lines = []
    runs = 0
    for event in events:
        kind = str(event.get("event"))
        if kind == "started":
            runs += 1
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(event["at"])))
        millis = int(float(event["at"]) * 1000) % 1000
        where = f"{event.get('host', '?')} pid {event.get('pid', '?')}"
        lines.append(f"  {when}.{millis:03d}Z  {kind:<13}  {_what(kind, event, runs)}  [{where}]")
    return lines


def _what(kind: str, event: Mapping[str, Any], runs: int) -> str:
    """What an event says, in words."""
    get = event.get
    reason = f": {get('reason')}" if get("reason") else ""
    if kind == "received":
        return f"read from the cloud's stream (entry {get('entry')})"
    if kind == "queued":
        batch = f", in a batch of {get('batch')}" if (get("batch") or 1) > 1 else ""
        return f"forwarded into the jobs queue{batch}"
    if kind == "refused":
        return f"failed at intake{reason}"
    if kind == "cancel_asked":
        return f"the cloud asked to cancel it (during {get('during', 'its run')})"
    if kind == "started":
        device = f", device {get('device')}" if get("device") else ""
        again = f", again {get('rerun')}" if get("rerun") else ""
        version = f" {get('version')}" if get("version") else ""
        return f"run {runs} started on {get('executor') or 'the executor'}{version}{device}{again}"
    if kind == "crashed":
        return f"run {runs} lost{reason}"
    if kind == "finished":
        return f"run {runs} ended {get('outcome')}"
    if kind == "recorded":
        return f"result recorded: {get('outcome')}, {get('bytes')} bytes{reason}"
    if kind == "delivery":
        answer = f"HTTP {get('status')}" if get("status") is not None else "no answer"
        took = f" after {get('took_sec')} s" if get("took_sec") is not None else ""
        return f"webhook attempt {get('attempt')}: {get('outcome')} ({answer}{took}){reason}"
    if kind == "dead_lettered":
        return f"delivery gave up after {get('attempts')} attempts; `coda-bridge replay` sends it again"
    if kind == "replayed":
        return "queued again by `coda-bridge replay`"
    if kind == "acknowledged":
        return f"outcome at the cloud ({get('outcome')}), stream entry acknowledged{reason}"
    return json.dumps({k: v for k, v in event.items() if k not in ("at", "event", "host", "pid")})


def _duration(seconds: int) -> str:
    if seconds >= 2 * 86_400:
        return f"{seconds / 86_400:.0f} more days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} more hours"
    return f"{seconds} more seconds"
