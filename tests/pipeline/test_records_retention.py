"""What the broker keeps of a delivered job, and for how long, is the retention setting (issue 23, item 1)."""

from __future__ import annotations

import redis

from coda_bridge.components import NodeComponents
from coda_bridge.settings import Settings

QPU = "qpu-retention"
#: A retention shorter than the default week, as an operator with a small broker would set.
RETENTION_SEC = 3600


def test_a_delivered_record_lives_for_the_retention_setting(redis_url: str) -> None:
    # given a node whose records are kept for an hour, and a job recorded and delivered
    settings = Settings(
        qpu_id=QPU, broker_url=redis_url, redis_url=redis_url, record_retention_sec=RETENTION_SEC
    )
    records = NodeComponents(settings, signs=False).records
    records.record([("job-1", {"status": "completed", "counts": {"00": 1}})])
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    records.mark_delivered("job-1", None, pipe)
    pipe.execute()
    # then its record expires within the hour, not a week
    assert 0 < client.ttl(records.key("job-1")) <= RETENTION_SEC


def test_the_default_retention_is_a_week() -> None:
    assert Settings().record_retention_sec == 7 * 86_400
