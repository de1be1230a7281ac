"""doctor's endpoint checks carry the connect headers to the cloud's own origin (a protected staging one)."""

from __future__ import annotations

import json

import pytest
import requests_mock as rm

from coda_bridge.ops.doctor import run_checks

BASE = "https://staging.cloud.test"
BYPASS = {"x-vercel-protection-bypass": "bypass-doctor-3c"}


def test_doctor_reaches_a_protected_cloud_with_the_connect_headers(
    clean_env: pytest.MonkeyPatch, requests_mock: rm.Mocker
) -> None:
    # given a node set up for a protected staging cloud
    clean_env.setenv("CODA_WEBAPP_URL", BASE)
    clean_env.setenv("CODA_NODE_CONNECT_HEADERS", json.dumps(BYPASS))
    requests_mock.head(rm.ANY, status_code=405)

    # when doctor checks the endpoints
    checks = {check.name: check for check in run_checks()}

    # then its HEADs (webapp, connect, heartbeat, and the clock's look at the cloud's Date) carried the
    # header, and they count as answers
    heads = [(r.netloc, r.headers.get("x-vercel-protection-bypass")) for r in requests_mock.request_history]
    assert heads == [("staging.cloud.test", "bypass-doctor-3c")] * 4
    assert checks["connect endpoint"].ok and checks["heartbeat endpoint"].ok
