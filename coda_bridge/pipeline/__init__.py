"""A job's way through the node, one module a step.

Stream intake (the bridge), execute, claims and the job record, runs on
the executor, status writes to the cloud, delivery and dead letters.
"""
