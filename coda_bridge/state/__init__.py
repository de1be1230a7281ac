"""The node's shared state in the broker Redis: its records, the process registry, and every key
name the node writes there."""
