"""Running the node's processes: the supervised group, restarts, the pid and log files, and doctor."""
