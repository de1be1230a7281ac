"""The node's metrics: histograms and dramatiq's metrics kept in the broker Redis, and the
collectors ``/metrics`` serves them with."""
