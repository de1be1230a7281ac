"""The local broker Redis.

The dramatiq broker and its queue names, and the node's own records and
shared state kept beside the queues, namespaced by ``qpu_id``.
"""
