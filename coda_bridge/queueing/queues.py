"""The node's queue and actor names, named once for the actors, the bridge, the ticker and the probes."""

from __future__ import annotations

__all__ = [
    "CONTROL_QUEUE",
    "DEAD_LETTERED_ACTOR",
    "DELIVER_ACTOR",
    "DELIVER_BATCH_ACTOR",
    "EXECUTE_ACTOR",
    "EXECUTE_BATCH_ACTOR",
    "HEARTBEAT_ACTOR",
    "JOBS_QUEUE",
    "QUEUES",
    "RESULTS_QUEUE",
    "VPN_CHECK_ACTOR",
]

#: Jobs for the executor: concurrency 1 per device by default.
JOBS_QUEUE = "jobs"
#: Results waiting for delivery to the cloud: many threads, retries with backoff.
RESULTS_QUEUE = "results"
#: Heartbeat and VPN ticks: their own workers, never behind jobs.
CONTROL_QUEUE = "control"
QUEUES = (JOBS_QUEUE, RESULTS_QUEUE, CONTROL_QUEUE)

#: Runs one stream entry's job (jobs queue).
EXECUTE_ACTOR = "execute"
#: Runs several waiting jobs through the executor's ``batch_run`` (jobs queue).
EXECUTE_BATCH_ACTOR = "execute_batch"
#: Posts one recorded result to the cloud (results queue).
DELIVER_ACTOR = "deliver"
#: Posts the recorded results of a batch, one attempt each; one that needs another goes on as a ``deliver``.
DELIVER_BATCH_ACTOR = "deliver_batch"
#: Called once a result ran out of delivery retries (results queue).
DEAD_LETTERED_ACTOR = "dead_lettered"
#: Posts a heartbeat (control queue).
HEARTBEAT_ACTOR = "heartbeat"
#: Checks the VPN tunnel and its probe targets (control queue).
VPN_CHECK_ACTOR = "vpn_check"
