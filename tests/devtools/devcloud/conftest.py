"""Fixtures for the cloud simulator: a real subprocess, and the app in-process."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from coda_bridge.devtools.devcloud import create_app
from coda_bridge.devtools.localredis import LocalRedis


@pytest.fixture
def app_client(redis_server: LocalRedis) -> FlaskClient:
    """The simulator app in-process (Flask test client), on the shared Redis."""
    return create_app(redis_url=redis_server.url).test_client()


@pytest.fixture
def qpu_id() -> str:
    """A QPU id no other test uses, so tests can share one simulator and one Redis."""
    return f"qpu-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def bell_ir() -> dict[str, Any]:
    """A small valid ``cz`` circuit measuring two qubits."""
    return {
        "version": "1.0",
        "target": "cz",
        "num_qubits": 2,
        "gates": [
            {"gate": "ry", "qubits": [0], "params": [1.5707963]},
            {"gate": "cz", "qubits": [0, 1], "params": []},
        ],
        "measurements": [0, 1],
        "metadata": {"source_hash": "abc", "compiled_at": "2026-01-01T00:00:00Z"},
    }
