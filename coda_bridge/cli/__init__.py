"""The ``coda-bridge`` command line: every command registered explicitly on one click group."""
