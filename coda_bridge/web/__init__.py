"""The probes app (Flask app factory) and its gunicorn configuration."""
