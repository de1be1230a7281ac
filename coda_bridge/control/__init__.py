"""Periodic control work on its own queue: one tick per interval, the heartbeat."""
