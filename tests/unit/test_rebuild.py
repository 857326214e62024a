"""Pure parts of `lendstream projections rebuild`: the topic merge, the fold, the progress line,
and bad input on the command line."""

from __future__ import annotations

import pytest
from aiokafka.structs import TopicPartition

from lendstream.cli import main
from lendstream.domain.loans import evolve
from lendstream.domain.sequencing import Message, Position
from lendstream.projections.replay import (
    Fold,
    Merge,
    UnknownProjection,
    progress_line,
    projection_named,
)
from lendstream.topics import Event
from tests.unit.domain.factories import T0, applied, approved, repayment

LOANS, PAYMENTS, CONTROL = "loan-events", "payment-events", "loan-control"


def message(topic: str, offset: int, stamp: float, partition: int = 0) -> Message:
    return Message(Position(topic, partition, offset), "L1", stamp, applied())


def at_offsets(messages: list[Message]) -> list[tuple[str, int]]:
    return [(m.position.topic, m.position.offset) for m in messages]


def tps(*topics: str, partition: int = 0) -> list[TopicPartition]:
    return [TopicPartition(t, partition) for t in topics]


def test_merge_orders_a_partition_number_by_timestamp_and_keeps_each_partitions_order() -> None:
    loans, payments = tps(LOANS, PAYMENTS)
    merge = Merge()
    merge.add(loans, [message(LOANS, 0, 1.0), message(LOANS, 1, 3.0), message(LOANS, 2, 2.5)])
    merge.add(payments, [message(PAYMENTS, 0, 2.0), message(PAYMENTS, 1, 4.0)])
    released = merge.release({loans: 2, payments: 1})
    assert at_offsets(released) == [
        (LOANS, 0), (PAYMENTS, 0), (LOANS, 1), (LOANS, 2), (PAYMENTS, 1),
    ]  # fmt: skip
    assert merge.complete({loans: 2, payments: 1})


def test_merge_waits_for_a_partition_that_may_still_deliver_an_earlier_message() -> None:
    loans, control = tps(LOANS, CONTROL)
    merge = Merge()
    merge.add(loans, [message(LOANS, 0, 5.0)])
    assert merge.release({loans: 0, control: 0}) == []  # control[0] not fetched yet
    merge.add(control, [message(CONTROL, 0, 5.0)])
    # equal timestamps: events before commands (the topic order of the processor's inputs)
    assert at_offsets(merge.release({loans: 0, control: 0})) == [(LOANS, 0), (CONTROL, 0)]


def test_merge_releases_nothing_past_the_targets_and_resumes_later() -> None:
    (loans,) = tps(LOANS)
    (other,) = tps(LOANS, partition=1)
    merge = Merge()
    merge.add(loans, [message(LOANS, i, float(i)) for i in range(4)])
    merge.add(other, [message(LOANS, 0, 9.0, partition=1)])
    assert at_offsets(merge.release({loans: 1, other: -1})) == [(LOANS, 0), (LOANS, 1)]
    assert merge.complete({loans: 1, other: -1})
    assert not merge.complete({loans: 3, other: 0})
    assert at_offsets(merge.release({loans: 3, other: 0})) == [(LOANS, 2), (LOANS, 3), (LOANS, 0)]


def keyed_message(event: Event, topic: str, offset: int) -> Message:
    return Message(Position(topic, 0, offset), event.key, T0.timestamp() + offset, event)


def test_fold_gives_the_versions_the_live_processor_writes() -> None:
    fold = Fold(evolve)
    rows = fold.apply([keyed_message(applied(), LOANS, 0), keyed_message(approved(), LOANS, 1)])
    assert [v.version for v in rows.versions] == [1, 2]
    assert rows.event_log == [] and rows.dead_letters == []  # only the rebuilt tables
    # a repayment before its payout parks (no version), across batches the state is kept
    rows = fold.apply([keyed_message(repayment(), PAYMENTS, 0)])
    assert rows.versions == []
    state = fold.states["L1"]
    assert state.state is not None and state.state.version == 2 and len(state.queue) == 1


def test_progress_line_shows_done_total_rate_and_eta() -> None:
    assert progress_line(2_000, 10_000, 2.0, "fold") == (
        "rebuild [fold]: 2,000/10,000 events (20%), 1,000 ev/s, ETA 0:08"
    )
    assert progress_line(0, 0, 0.0, "fold").endswith("0 ev/s, ETA ?")


def test_names_map_to_the_loan_projection() -> None:
    assert {projection_named(n) for n in (None, "loans", "loan_summary", "loan_history")} == {
        "loans"
    }
    with pytest.raises(UnknownProjection, match="unknown projection 'ledger'"):
        projection_named("ledger")


def test_an_unknown_name_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["projections", "rebuild", "ledger"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "lendstream: unknown projection 'ledger' (known: loans, loan_summary, loan_history, "
        "customer_exposure)"
    ]
