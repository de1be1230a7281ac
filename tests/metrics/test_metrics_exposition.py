"""A real /metrics body (Flask's test client, real Redis): its families, promtool's lint, and the shipped
Grafana dashboard and Prometheus rules naming only what it serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
import yaml
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from coda_bridge import __version__
from coda_bridge.cloud.redis_keys import group_name, stream_key
from coda_bridge.devtools.localredis import free_port
from coda_bridge.metrics.histograms import (
    DELIVERY_ATTEMPTS,
    JOB_DURATION,
    WEBHOOK_DURATION,
    XADD_TO_RESULT,
    Histograms,
)
from coda_bridge.metrics.observations import DramatiqMetrics
from coda_bridge.settings import Settings
from coda_bridge.web import probes_app as web

QPU = "qpu-expo"
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "coda-bridge.json"
RULES = ROOT / "deploy" / "prometheus" / "coda-bridge-rules.yaml"
#: Values that must never reach a metrics body.
SECRETS = {
    "jwt_private_key": "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXJrZXI=\n-----END PRIVATE KEY-----",
    "node_token": "node-token-marker-4711",
    "dashboard_password": "dashboard-password-marker",
}
#: The families the issue asks for, beyond the counters /metrics always had.
NEW_FAMILIES = {
    "coda_bridge_job_duration_seconds",
    "coda_bridge_webhook_duration_seconds",
    "coda_bridge_xadd_to_result_seconds",
    "coda_bridge_delivery_attempts",
    "coda_bridge_last_heartbeat_timestamp_seconds",
    "coda_bridge_last_stream_read_timestamp_seconds",
    "coda_bridge_build_info",
    "coda_bridge_cloud_redis_up",
    "coda_bridge_stream_lag_entries",
    "coda_bridge_stream_pending_entries",
    "coda_bridge_stream_oldest_pending_age_seconds",
    "dramatiq_messages",
    "dramatiq_message_errors",
    "dramatiq_message_retries",
    "dramatiq_message_rejects",
    "dramatiq_messages_inprogress",
    "dramatiq_delayed_messages_inprogress",
    "dramatiq_message_duration_milliseconds",
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
}


def make_settings(redis_url: str) -> Settings:
    return Settings(
        qpu_id=QPU,
        redis_url=redis_url,
        broker_url=redis_url,
        jwt_key_id="kid-expo",
        dashboard_enabled=False,
        **SECRETS,
    )


def busy_node(app: Flask, cloud: redis.Redis, redis_url: str) -> None:
    """What a node that ran a few jobs leaves behind: counters, histograms, dramatiq's metrics, a stream."""
    parts = app.config["CODA_PARTS"]
    state = parts.state
    state.count("jobs_completed", 3)
    state.heartbeat_accepted(time.time() - 4)
    state.stream_read()
    histograms = Histograms(state.client, QPU)
    histograms.observe(JOB_DURATION.name, 0.4)
    histograms.observe(WEBHOOK_DURATION.name, 0.02, {"outcome": "accepted"})
    histograms.observe(DELIVERY_ATTEMPTS.name, 2, {"outcome": "delivered"})
    # three jobs at the cloud: one read and pending, two not read yet
    stream, group = stream_key(QPU), group_name(QPU)
    first = cloud.xadd(stream, {"job_id": "j1"})
    cloud.xadd(stream, {"job_id": "j2"})
    cloud.xadd(stream, {"job_id": "j3"})
    cloud.xgroup_create(stream, group, id="0")
    cloud.xreadgroup(group, "c1", {stream: ">"}, count=1)
    histograms.observe_since_entry(XADD_TO_RESULT.name, first.decode(), {"status": "completed"})
    # one message through dramatiq's hooks, as a worker's middleware sees it
    broker = web.create_broker(make_settings(redis_url))
    metrics = next(m for m in broker.middleware if isinstance(m, DramatiqMetrics))
    message = dramatiq.Message(queue_name="jobs", actor_name="execute", args=(), kwargs={}, options={})
    metrics.before_process_message(broker, message)
    metrics.after_process_message(broker, message)
    metrics.sink.flush()  # what its flusher thread does every 0.25 s
    broker.client.close()


@pytest.fixture
def body(redis_url: str) -> Iterator[str]:
    app = web.create_app(make_settings(redis_url))
    cloud = redis.Redis.from_url(redis_url)
    busy_node(app, cloud, redis_url)
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    yield response.get_data(as_text=True)
    cloud.close()


#: The sample names a family of each type has, even before it has samples.
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def exposed(text: str) -> tuple[set[str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """Family names plus every sample name, and the samples by name and labels."""
    names: set[str] = set()
    samples = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        for sample in family.samples:
            names.add(sample.name)
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return names, samples


def test_metrics_serve_the_histograms_dramatiq_stream_build_and_process_families(body: str) -> None:
    names, samples = exposed(body)

    assert names >= NEW_FAMILIES
    assert samples[("coda_bridge_job_duration_seconds_count", ())] == 1
    assert samples[("coda_bridge_xadd_to_result_seconds_count", (("status", "completed"),))] == 1
    assert samples[("coda_bridge_delivery_attempts_bucket", (("le", "2.0"), ("outcome", "delivered")))] == 1
    labels = (("actor_name", "execute"), ("queue_name", "jobs"))
    assert samples[("dramatiq_messages_total", labels)] == 1
    assert samples[("dramatiq_message_duration_milliseconds_count", labels)] == 1
    assert samples[("coda_bridge_stream_lag_entries", ())] == 2
    assert samples[("coda_bridge_stream_pending_entries", ())] == 1
    assert 0 <= samples[("coda_bridge_stream_oldest_pending_age_seconds", ())] < 30
    assert samples[("coda_bridge_cloud_redis_up", ())] == 1
    assert abs(time.time() - 4 - samples[("coda_bridge_last_heartbeat_timestamp_seconds", ())]) < 2
    build = [key for key in samples if key[0] == "coda_bridge_build_info"]
    assert len(build) == 1 and ("version", __version__) in build[0][1]
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_start_time_seconds", ())] <= time.time()


def test_no_secret_reaches_the_metrics_body(body: str) -> None:
    for name, secret in SECRETS.items():
        for part in secret.splitlines():
            if len(part) > 8:
                assert part not in body, f"{name} leaked into /metrics"


def test_an_unreachable_cloud_redis_is_a_gauge_at_0_not_a_failed_scrape(redis_url: str) -> None:
    settings = make_settings(redis_url).replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    app = web.create_app(settings)

    response = app.test_client().get("/metrics")

    assert response.status_code == 200
    names, samples = exposed(response.get_data(as_text=True))
    assert samples[("coda_bridge_cloud_redis_up", ())] == 0
    assert "coda_bridge_stream_lag_entries" not in names


@pytest.mark.skipif(
    not shutil.which("promtool"), reason="needs promtool (Debian: apt-get install prometheus)"
)
def test_promtool_finds_nothing_to_lint_in_the_metrics_body(body: str) -> None:
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=60, check=False
    )

    findings = set((done.stdout + done.stderr).splitlines())
    # dramatiq's own name, kept so dashboards made for dramatiq's middleware work: the one finding allowed
    assert findings <= {
        'dramatiq_message_duration_milliseconds use base unit "seconds" instead of "milliseconds"'
    }, findings
    assert done.returncode == (3 if findings else 0), done.stderr


# -- the dashboard and the rules name only what /metrics serves --

#: PromQL words that are not metric names.
_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (with Grafana variables) selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    found = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in _PROMQL_WORDS:
            found.add(word)
    return found


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        exprs += [target["expr"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # Grafana's label_values(<selector>, <label>)
            found = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"])
            assert found, variable["query"]
            exprs.append(found.group(1))
    return exprs


def test_the_metric_name_finder_sees_names_and_skips_functions_labels_and_variables() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, outcome) "
        '(rate(a_bucket{job=~"$job", x="b_c"}[$__rate_interval])))'
        " / on(instance) group_left(version) c_info > bool 0 or time() - d_seconds offset 5m"
    )

    assert metric_names(expr) == {"a_bucket", "c_info", "d_seconds"}


def test_the_grafana_dashboard_parses_and_names_only_exposed_metrics(body: str) -> None:
    names, _ = exposed(body)
    dashboard = json.loads(DASHBOARD.read_text())

    used = set().union(*(metric_names(expr) for expr in dashboard_exprs()))

    assert dashboard["uid"] == "coda-bridge"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert used - names == set(), f"the dashboard names metrics /metrics does not serve: {used - names}"
    assert {"dramatiq_messages_total", "coda_bridge_xadd_to_result_seconds_bucket"} <= used
    assert all(
        t["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] for t in p.get("targets", [])
    )


def test_the_alert_rules_name_only_exposed_metrics(body: str) -> None:
    names, _ = exposed(body)
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]

    used = set().union(*(metric_names(str(rule["expr"])) for rule in rules))

    assert used - names == {"up"}, f"the rules name metrics /metrics does not serve: {used - names - {'up'}}"
    alerts = {rule["alert"] for rule in rules}
    assert {
        "CodaBridgeNodeOffline",
        "CodaBridgeHeartbeatsFailing",
        "CodaBridgeDeadLettersGrowing",
        "CodaBridgeStreamLag",
    } <= alerts
