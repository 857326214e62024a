"""`StallWatch`: records that exist but never arrive are noticed after the patience;
`ContiguityGuard`: a batch that would skip existing records is refused."""

from __future__ import annotations

import pytest

from lendstream.agents.contiguity import (
    ContiguityGuard,
    SkippedMessages,
    StallWatch,
    waits_its_turn,
)

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


def test_a_busy_worker_excuses_a_partition_waiting_for_its_turn() -> None:
    # a batch was committed 5 s ago: the partition's records are fetched or will be
    assert waits_its_turn(committed_at=95.0, now=100.0, busy_within=20)


def test_an_idle_worker_excuses_nothing() -> None:
    # nothing committed for 30 s (or ever): the partition's records are not being processed
    assert not waits_its_turn(committed_at=70.0, now=100.0, busy_within=20)
    assert not waits_its_turn(committed_at=None, now=100.0, busy_within=20)


def test_a_busy_worker_s_partitions_are_given_the_busy_patience() -> None:
    watch = StallWatch(patience=60, busy_patience=600)
    assert watch.check({TP: 107}, {TP: 900}, now=0, busy=True) == []
    assert watch.check({TP: 107}, {TP: 900}, now=599, busy=True) == []
    assert watch.check({TP: 107}, {TP: 900}, now=120, busy=False) == [TP]  # idle: the patience
    assert watch.check({TP: 107}, {TP: 900}, now=600, busy=True) == [TP]


class _Record:
    def __init__(self, offset: int) -> None:
        self.message = type("Msg", (), {"topic": TP[0], "partition": TP[1], "offset": offset})()


async def test_a_hole_right_after_a_batch_still_committing_is_not_taken_for_a_skip() -> None:
    # Batch N (offsets 90..100) is checked and still committing: PostgreSQL says 89. Offset
    # 101 holds no record (e.g. a transaction marker), so batch N+1 starts at 102.
    async def stored() -> dict[tuple[str, int], int]:
        return {TP: 89}

    async def first_from(topic: str, partition: int, offset: int) -> int | None:
        return offset if offset <= 100 else 102

    guard = ContiguityGuard(stored, first_from)
    await guard.check([_Record(o) for o in range(90, 101)])  # type: ignore[misc]
    await guard.check([_Record(102)])  # type: ignore[list-item]
    assert guard.holes_skipped == 1


async def test_a_real_skip_after_the_stored_position_still_stops() -> None:
    async def stored() -> dict[tuple[str, int], int]:
        return {TP: 89}

    async def first_from(topic: str, partition: int, offset: int) -> int | None:
        return offset

    guard = ContiguityGuard(stored, first_from)
    with pytest.raises(SkippedMessages):
        await guard.check([_Record(95)])  # type: ignore[list-item]
