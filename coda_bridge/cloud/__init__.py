"""The Coda cloud as the node sees it.

The HTTP client (connect, heartbeat, webhook), RS256 signing of the
node's JWTs, and the cloud Redis's key names and client.
"""
