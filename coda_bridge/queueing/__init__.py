"""dramatiq's broker for the node: the Redis broker, queue and actor names, the node's
middleware, the entry index beside the queues, and the broker Redis's health (outage, refusal,
sizing)."""
