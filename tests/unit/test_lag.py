"""Lag arithmetic and presentation (pure; the Kafka side is in tests/integration/test_lag.py)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import orjson

from lendstream.kafka import RecordHead
from lendstream.lag import PartitionLag, Target, format_table, partition_lag, to_json

NOW = 1_000_000.0


def lag_of(target: Target, end: int, head: RecordHead | None) -> PartitionLag:
    return partition_lag(target, end, head, NOW)


def test_lag_counts_from_the_position_and_ages_the_record_there() -> None:
    row = lag_of(Target("g", "t", 0, committed=40), 100, RecordHead(40, int((NOW - 90) * 1000)))
    assert (row.lag, row.lag_seconds, row.position) == (60, 90.0, 40)


def test_position_is_the_later_of_kafka_commit_and_postgres() -> None:
    assert Target("g", "t", 0, committed=40, processed=55).position == 55
    assert Target("g", "t", 0, committed=70, processed=55).position == 70
    assert Target("g", "t", 0, processed=55).position == 55
    assert Target("g", "t", 0).position is None


def test_caught_up_or_idle_is_zero_however_old_the_last_message() -> None:
    row = lag_of(Target("g", "t", 0, committed=100), 100, None)
    assert (row.lag, row.lag_seconds) == (0, 0.0)
    ahead = lag_of(Target("g", "t", 0, processed=120), 100, None)  # a recreated topic
    assert (ahead.lag, ahead.lag_seconds) == (0, 0.0)


def test_unknown_position_counts_everything_retained() -> None:
    row = lag_of(Target("g", "t", 0), 100, RecordHead(30, int((NOW - 5) * 1000)))
    assert (row.lag, row.lag_seconds, row.committed, row.processed) == (70, 5.0, None, None)
    empty = lag_of(Target("g", "t", 0), 0, None)
    assert (empty.lag, empty.lag_seconds) == (0, 0.0)


def test_records_deleted_below_the_position_are_not_counted() -> None:
    row = lag_of(Target("g", "t", 0, committed=10), 100, RecordHead(60, int(NOW * 1000)))
    assert row.lag == 40


def test_no_record_up_to_the_end_means_nothing_to_process() -> None:
    row = lag_of(Target("g", "t", 0, committed=98), 100, None)  # transaction markers only
    assert (row.lag, row.lag_seconds) == (0, 0.0)


def test_clock_skew_and_missing_timestamps() -> None:
    future = lag_of(Target("g", "t", 0, committed=0), 5, RecordHead(0, int((NOW + 30) * 1000)))
    assert future.lag_seconds == 0.0
    unknown = lag_of(Target("g", "t", 0, committed=0), 5, RecordHead(0, -1))
    assert unknown.lag == 5 and math.isnan(unknown.lag_seconds)


ROWS = [
    PartitionLag("lendstream", "loan-events", 1, 10, 12, 20, 8, 3.25),
    PartitionLag("lendstream", "loan-events", 0, None, None, 5, 5, math.nan),
    PartitionLag("lendstream", "payment-events", 0, 7, None, 7, 0, 0.0),
]


def test_table_has_a_line_per_partition_and_a_total_per_topic() -> None:
    lines = format_table(ROWS).splitlines()
    assert lines[0].split() == [
        "GROUP", "TOPIC", "PARTITION", "COMMITTED", "PROCESSED", "END", "LAG", "LAG_SECONDS",
    ]  # fmt: skip
    assert lines[1].split() == ["lendstream", "loan-events", "0", "-", "-", "5", "5", "?"]
    assert lines[2].split() == ["lendstream", "loan-events", "1", "10", "12", "20", "8", "3.2"]
    assert lines[3].split() == ["lendstream", "loan-events", "total", "13", "3.2"]
    assert lines[4].split() == ["lendstream", "payment-events", "0", "7", "-", "7", "0", "0.0"]
    assert len(lines) == 5  # a single partition needs no total


def test_json_is_machine_readable_with_null_for_unknowns() -> None:
    doc = orjson.loads(to_json(ROWS, at=datetime(2026, 1, 1, tzinfo=UTC)))
    assert doc["at"] == "2026-01-01T00:00:00+00:00"
    first = doc["partitions"][0]
    assert first == {
        "group": "lendstream", "topic": "loan-events", "partition": 0, "committed": None,
        "processed": None, "end": 5, "lag": 5, "lag_seconds": None,
    }  # fmt: skip
    assert [p["partition"] for p in doc["partitions"]] == [0, 1, 0]


def test_empty_table_says_why() -> None:
    assert "no committed offsets" in format_table([])
