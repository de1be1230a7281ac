"""Development tools: a whole local node (stack), a throw-away Redis, the demo, and job submission."""
