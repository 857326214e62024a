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


def test_an_excused_partition_counts_its_patience_again() -> None:
    watch = StallWatch(patience=60)
    watch.check({TP: 107}, {TP: 900}, now=0)
    assert watch.check({TP: 107}, {TP: 900}, now=60) == [TP]
    watch.excuse(TP)
    assert watch.check({TP: 107}, {TP: 900}, now=70) == []
    assert watch.check({TP: 107}, {TP: 900}, now=129) == []
    assert watch.check({TP: 107}, {TP: 900}, now=130) == [TP]


def test_a_partition_whose_next_record_is_newer_than_the_busy_workers_waits_its_turn() -> None:
    # the worker committed 5 s ago, records up to t=1,000.0 s; the partition's next is t=1,000.5
    assert waits_its_turn(1_000_500, newest_processed=1_000.0, committed_at=95.0, now=100.0,
                          busy_within=20)  # fmt: skip


def test_a_partition_whose_next_record_is_older_than_what_the_worker_commits_is_stalled() -> None:
    assert not waits_its_turn(999_000, newest_processed=1_000.0, committed_at=95.0, now=100.0,
                              busy_within=20)  # fmt: skip


def test_an_idle_worker_excuses_nothing() -> None:
    # nothing committed for 30 s (or ever): the records are not delivered, whatever their time
    assert not waits_its_turn(2_000_000, newest_processed=1_000.0, committed_at=70.0, now=100.0,
                              busy_within=20)  # fmt: skip
    assert not waits_its_turn(2_000_000, newest_processed=0.0, committed_at=None, now=100.0,
                              busy_within=20)  # fmt: skip


def test_a_record_without_a_timestamp_is_not_excused() -> None:
    assert not waits_its_turn(-1, newest_processed=1_000.0, committed_at=95.0, now=100.0,
                              busy_within=20)  # fmt: skip
