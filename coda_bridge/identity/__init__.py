"""The node's identity.

Connect to the cloud (provision with a one-time token, or reconnect with
the node's JWT), and the credentials persisted in the state directory.
"""
