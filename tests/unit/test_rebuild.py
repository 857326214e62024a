"""Pure parts of `lendstream projections rebuild`: the topic merge, the fold, the rows of the
rebuilt tables, the progress line, and bad input on the command line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from lendstream.cli import main
from lendstream.domain.loans import Loan, evolve
from lendstream.domain.sequencing import Keyed, Message, Position
from lendstream.projections.loans import exposure_deltas, history_rows, loan_row, rows_for
from lendstream.projections.replay import (
    ExposureSum,
    Fold,
    Merge,
    ShadowRows,
    UnknownProjection,
    progress_line,
    projection_named,
)
from lendstream.topics import Event
from tests.unit.domain.factories import (
    NOW,
    T0,
    applied,
    approved,
    feed,
    lifecycle_versions,
    repayment,
)

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
    versions = fold.apply([keyed_message(applied(), LOANS, 0), keyed_message(approved(), LOANS, 1)])
    assert [v.version for v in versions] == [1, 2]
    # a repayment before its payout parks (no version), across batches the state is kept
    assert fold.apply([keyed_message(repayment(), PAYMENTS, 0)]) == []
    state = fold.states["L1"]
    assert state.state is not None and state.state.version == 2 and len(state.queue) == 1


def test_fold_versions_are_the_live_projections_versions() -> None:
    """A duplicate and a parked event that a later event releases: the same versions as the
    live processor's `rows_for` over the same outcomes."""
    first = applied()
    events = [first, repayment(), approved(), first]  # the repayment parks; a duplicate
    messages = [keyed_message(e, LOANS, offset) for offset, e in enumerate(events)]
    _, outcomes = feed(Keyed(), messages)
    live = rows_for(outcomes, NOW).versions
    assert Fold(evolve).apply(messages) == live and [v.version for v in live] == [1, 2]


Tables = dict[str, dict[Any, Any]]


def live_tables(versions: Sequence[Loan]) -> Tables:
    """What the live writer leaves in empty tables after one batch of `versions`."""
    rows, to_close = history_rows(versions)
    assert to_close == []  # every loan starts in the batch
    latest = {v.loan_id: v for v in versions}
    _, deltas = exposure_deltas(list(latest.values()), {})
    return {
        "loan_history": {(r[0], r[17]): r for r in rows},
        "loan_summary": {k: loan_row(v) for k, v in latest.items()},
        "customer_exposure": {k: tuple(d) for k, d in deltas.items()},
    }


def shadow_round(shadow: ShadowRows, tables: Tables, batches: Sequence[Sequence[Loan]]) -> None:
    """One round of `batches` through `shadow`, applied to `tables` as `ShadowWriter` does:
    inserts that never meet an existing row, closes of open versions, replaced rows."""
    history = tables["loan_history"]

    def insert(rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            assert (row[0], row[17]) not in history, "a history row is written twice"
            history[(row[0], row[17])] = row

    for batch in batches:
        rows, closes = shadow.add(batch)
        insert(rows)
        for loan_id, version, valid_to in closes:
            row = history.get((loan_id, version))
            if row is not None and row[-1] is None:
                history[(loan_id, version)] = (*row[:-1], valid_to)
    end = shadow.end_round()
    insert(end.history)
    tables["loan_summary"].update({row[0]: row for row in end.summaries})
    tables["customer_exposure"].update({(c, cur): (a, o) for c, cur, a, o in end.exposures})


@pytest.mark.parametrize("batch", [1, 2, 5, 100])
@pytest.mark.parametrize("rounds", [(), (3,), (4, 9), (1, 2, 8, 16)])
def test_shadow_rows_leave_the_tables_of_the_live_writer_at_every_round_end(
    batch: int, rounds: tuple[int, ...]
) -> None:
    """Whatever the batches and rounds, each round ends with the tables the live writer leaves
    for the versions reached: versions closed across batches and rounds, summaries and
    exposures (a settled loan back to zeros, a rejected one with a row of zeros) replaced."""
    versions = lifecycle_versions()
    shadow = ShadowRows()
    tables: Tables = {"loan_history": {}, "loan_summary": {}, "customer_exposure": {}}
    starts = [0, *rounds]
    for start, end in zip(starts, [*rounds, len(versions)], strict=True):
        part = versions[start:end]
        shadow_round(shadow, tables, [part[i : i + batch] for i in range(0, len(part), batch)])
        assert tables == live_tables(versions[:end])
        assert shadow.held == {}  # memory: the written summaries only
        assert shadow.written == {v.loan_id: v for v in versions[:end]}
    exposure = tables["customer_exposure"]
    assert exposure == {
        ("C1", "EUR"): (1, 90_000),
        ("C1", "USD"): (1, 110_000),
        ("C2", "USD"): (0, 0),
    }


@pytest.mark.parametrize("rounds", [(), (3,), (4, 9)])
def test_exposures_of_folders_over_disjoint_loans_sum_to_the_live_ones(
    rounds: tuple[int, ...],
) -> None:
    """Fold processes each own some loans (`ProcessFolds`); a customer's loans may be in
    several: the sum of each folder's latest totals is the live writer's exposure."""
    versions = lifecycle_versions()
    loans = sorted({v.loan_id for v in versions})
    owners = {loan: n % 2 for n, loan in enumerate(loans)}
    folders, total = [ShadowRows(), ShadowRows()], ExposureSum()
    exposure: dict[tuple[str, str], tuple[int, int]] = {}
    starts = [0, *rounds]
    for start, end in zip(starts, [*rounds, len(versions)], strict=True):
        part = versions[start:end]
        ends = []
        for n, folder in enumerate(folders):
            folder.add([v for v in part if owners[v.loan_id] == n])
            ends.append(folder.end_round().exposures)
        exposure.update({(c, cur): (a, o) for c, cur, a, o in total.add(ends)})
        assert exposure == live_tables(versions[:end])["customer_exposure"]


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
