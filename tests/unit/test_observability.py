"""The collector's gauges from what it read (fakes at the Faust edge; the live worker is in
tests/integration/test_observability.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from lendstream.lag import PartitionLag
from lendstream.metrics import Metrics
from lendstream.observability import Collector
from lendstream.settings import Settings


def collector() -> tuple[Collector, CollectorRegistry]:
    registry = CollectorRegistry()
    app = SimpleNamespace(
        conf=SimpleNamespace(id="lendstream"),
        topics=[SimpleNamespace(topics=("loan-events", "lendstream-loans-changelog"))],
        tables=SimpleNamespace(changelog_topics={"lendstream-loans-changelog"}),
    )
    runtime = SimpleNamespace(metrics=Metrics(registry), settings=Settings(_env_file=None))  # type: ignore[call-arg]
    return Collector(app, runtime), registry  # type: ignore[arg-type]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_dead_letters_are_zero_filled_for_every_source_topic_and_status() -> None:
    c, r = collector()
    rows = [
        {"topic": "payment-events", "status": "dead", "n": 3, "retrying": 0},
        {"topic": "payment-events", "status": "parked", "n": 5, "retrying": 2},
    ]
    c._publish_tables({"dead_letters": rows})
    assert value(r, "lendstream_dead_letters", topic="payment-events", status="dead") == 3
    assert value(r, "lendstream_dead_letters", topic="payment-events", status="parked") == 5
    assert value(r, "lendstream_dead_letters_retrying", topic="payment-events") == 2
    assert value(r, "lendstream_dead_letters_retrying", topic="loan-events") == 0
    assert value(r, "lendstream_dead_letters", topic="loan-events", status="dead") == 0
    assert value(r, "lendstream_dead_letters", topic="loan-events", status="parked") == 0
    changelog = value(r, "lendstream_dead_letters", topic="lendstream-loans-changelog",
                      status="dead")  # fmt: skip
    assert changelog is None


def test_sagas_by_status_with_overdue_and_retrying_and_a_missing_table() -> None:
    c, r = collector()
    rows: list[dict[str, Any]] = [
        {"saga_type": "payout", "status": "running", "n": 5, "overdue": 2, "retrying": 1},
        {"saga_type": "payout", "status": "completed", "n": 9, "overdue": 0, "retrying": 0},
    ]
    c._publish_tables({"saga_instances": rows})
    assert value(r, "lendstream_saga_instances", saga="payout", status="running") == 5
    assert value(r, "lendstream_saga_instances", saga="payout", status="failed") == 0
    assert value(r, "lendstream_saga_instances_overdue", saga="payout") == 2
    assert value(r, "lendstream_saga_instances_retrying", saga="payout") == 1
    c._publish_tables({})  # the table is gone (or not there yet): no stale series
    assert value(r, "lendstream_saga_instances", saga="payout", status="running") is None


def test_lag_series_of_partitions_that_went_away_are_removed() -> None:
    c, r = collector()
    rows = [PartitionLag("lendstream", "loan-events", p, 5, None, 9, 4, 1.5) for p in (0, 1)]
    c._publish_lag(rows, started=123.0)
    labels = {"group": "lendstream", "topic": "loan-events"}
    assert value(r, "lendstream_consumer_lag_messages", partition="1", **labels) == 4
    assert value(r, "lendstream_consumer_position", partition="1", **labels) == 5
    assert value(r, "lendstream_partition_end_offset", topic="loan-events", partition="1") == 9
    assert value(r, "lendstream_lag_probe_timestamp_seconds") == 123.0
    c._publish_lag(rows[:1], started=124.0)
    assert value(r, "lendstream_consumer_lag_messages", partition="1", **labels) is None
    assert value(r, "lendstream_consumer_lag_seconds", partition="0", **labels) == 1.5


def test_health_names_what_the_last_probe_could_not_reach() -> None:
    c, _ = collector()
    assert c.health_problems() == []
    c.kafka_problem = "Kafka unreachable: KafkaConnectionError: refused"
    assert c.health_problems() == ["Kafka unreachable: KafkaConnectionError: refused"]
