"""`StallWatch`: records that exist but never arrive are noticed after the patience."""

from __future__ import annotations

from lendstream.agents.contiguity import StallWatch, waits_its_turn

TP = ("loan-events", 3)


def test_a_partition_without_progress_behind_its_end_is_stalled_after_the_patience() -> None:
    watch = StallWatch(patience=60)
    assert watch.check({TP: 107}, {TP: 900}, now=0) == []
    assert watch.check({TP: 107}, {TP: 950}, now=59) == []
    assert watch.check({TP: 107}, {TP: 950}, now=60) == [TP]


def test_progress_or_reaching_the_end_resets_the_clock() -> None:
    watch = StallWatch(patience=60)
    watch.check({TP: 107}, {TP: 900}, now=0)
    assert watch.check({TP: 108}, {TP: 900}, now=59) == []
    assert watch.check({TP: 108}, {TP: 900}, now=100) == []
    assert watch.check({TP: 899}, {TP: 900}, now=119) == []  # caught up
    assert watch.check({TP: 899}, {TP: 901}, now=120) == []
    assert watch.check({TP: 899}, {TP: 901}, now=179) == []
    assert watch.check({TP: 899}, {TP: 901}, now=180) == [TP]


def test_a_partition_never_processed_counts_from_its_start() -> None:
    watch = StallWatch(patience=10)
    assert watch.check({}, {TP: 5}, now=0) == []
    assert watch.check({}, {TP: 5}, now=10) == [TP]
    assert watch.check({}, {TP: 0}, now=20) == []  # an empty partition is never stalled


def test_stuck_for_is_the_time_since_the_position_last_moved() -> None:
    watch = StallWatch(patience=60)
    assert watch.stuck_for(TP, now=5) == 0.0
    watch.check({TP: 107}, {TP: 900}, now=10)
    watch.check({TP: 107}, {TP: 900}, now=70)
    assert watch.stuck_for(TP, now=70) == 60


def test_a_partition_whose_records_are_fetched_waits_for_the_busy_worker() -> None:
    # processed up to 107, the client has fetched up to 3,556; a batch was committed 5 s ago
    assert waits_its_turn(107, fetched=3557, committed_at=95.0, now=100.0, busy_within=20)


def test_a_partition_with_nothing_fetched_past_its_position_is_stalled() -> None:
    assert not waits_its_turn(107, fetched=108, committed_at=95.0, now=100.0, busy_within=20)
    assert not waits_its_turn(107, fetched=None, committed_at=95.0, now=100.0, busy_within=20)


def test_an_idle_worker_excuses_nothing() -> None:
    # records fetched, but nothing committed for 30 s (or ever): they are not being processed
    assert not waits_its_turn(107, fetched=3557, committed_at=70.0, now=100.0, busy_within=20)
    assert not waits_its_turn(107, fetched=3557, committed_at=None, now=100.0, busy_within=20)
