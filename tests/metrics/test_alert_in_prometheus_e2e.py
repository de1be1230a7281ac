"""The shipped alert rules in a real Prometheus: a node whose jobs worker exits 78 fires the alert.

Real processes: a whole local node (its probes app under gunicorn) and
Prometheus 2 scraping its /metrics every second with
deploy/prometheus/coda-bridge-rules.yaml loaded as shipped, except that the
alert's ``for`` (two minutes) is cut to a few seconds: what this test proves
is that the node's real /metrics makes the shipped expression, labels and
description fire; the two minutes themselves are checked by ``promtool test
rules`` (deploy/prometheus/coda-bridge-rules.test.yaml, tests/ops).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from pipeline_support import SUITE_RESULT_PROCESSES

from coda_bridge.devtools.localredis import free_port
from coda_bridge.devtools.stack import LocalStack, wait_until
from coda_bridge.ops.exits import EX_CONFIG

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not shutil.which("prometheus"), reason="needs prometheus (Debian: apt-get install prometheus)"
    ),
]

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "coda-bridge-rules.yaml"
ALERT = "CodaBridgeNoJobsWorkerReady"
#: The alert's ``for`` in the shipped rules, and in the copy this test loads (seconds).
SHIPPED_FOR = "2m"
FOR_SEC = 5
#: The rule's ``for`` plus room for a busy machine (seconds).
FIRING_SEC = FOR_SEC + 90
#: How long Prometheus and the jobs worker may take to come up or give up (seconds).
SETTLE_SEC = 60


def _alerts(base: str) -> list[dict[str, Any]]:
    try:
        answer = requests.get(f"{base}/api/v1/alerts", timeout=5).json()
    except (requests.RequestException, ValueError):
        return []
    alerts: list[dict[str, Any]] = answer["data"]["alerts"]
    return alerts


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Prometheus on a free loopback port; its config file is written by the test, then reloaded."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n")
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base), SETTLE_SEC, "Prometheus to be ready")
        yield base, config
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _rules_with_short_for(folder: Path) -> Path:
    """The shipped rules file, with only the ``for`` of :data:`ALERT` cut to :data:`FOR_SEC`."""
    rules = yaml.safe_load(RULES.read_text())
    [rule] = [r for group in rules["groups"] for r in group["rules"] if r.get("alert") == ALERT]
    assert rule["for"] == SHIPPED_FOR, "the docstring and the promtool test speak of two minutes"
    rule["for"] = f"{FOR_SEC}s"
    copy = folder / RULES.name
    copy.write_text(yaml.safe_dump(rules))
    return copy


def _ready(base: str) -> bool:
    try:
        return requests.get(f"{base}/-/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_a_jobs_worker_exiting_78_fires_the_shipped_alert(
    prometheus: tuple[str, Path], tmp_path: Path
) -> None:
    base, config = prometheus
    # given a node whose executor cannot be built, scraped by Prometheus with the shipped rules
    (tmp_path / "node").mkdir()
    env = {
        "CODA_EXECUTOR_FACTORY": "no_such_backend_module:create_executor",
        "CODA_RESULT_PROCESSES": SUITE_RESULT_PROCESSES,
    }
    with LocalStack(tmp_path / "node", env=env, web=True) as stack:
        scrape = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(_rules_with_short_for(tmp_path))],
            "scrape_configs": [
                {
                    "job_name": "coda-bridge-web",
                    "static_configs": [{"targets": [f"127.0.0.1:{stack.web_port}"]}],
                }
            ],
        }
        config.write_text(yaml.safe_dump(scrape))
        assert requests.post(f"{base}/-/reload", timeout=10).status_code == 200

        # when its jobs worker exits 78
        jobs = stack.children["jobs"]
        wait_until(lambda: not jobs.alive(), SETTLE_SEC, "the jobs worker to give up")
        assert jobs.process.returncode == EX_CONFIG

        # then the alert goes pending, and fires once its ``for`` has passed
        wait_until(
            lambda: any(a["labels"]["alertname"] == ALERT for a in _alerts(base)), SETTLE_SEC, "pending"
        )
        firing = wait_until(
            lambda: [
                a for a in _alerts(base) if a["labels"]["alertname"] == ALERT and a["state"] == "firing"
            ],
            FIRING_SEC,
            f"{ALERT} to fire",
        )
        assert firing[0]["labels"]["severity"] == "critical"
        assert firing[0]["labels"]["instance"] == f"127.0.0.1:{stack.web_port}"
        assert "coda-bridge doctor" in firing[0]["annotations"]["description"]
