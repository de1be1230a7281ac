"""Development tooling, never imported by the node's runtime: a whole local node (stack), a
throw-away Redis, the demo, job submission, and the local cloud simulator (devcloud).  Only the
CLI commands that run it (``demo``, ``submit``, ``devcloud``), the tests and the benchmarks import it."""
