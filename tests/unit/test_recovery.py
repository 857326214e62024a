"""`lendstream.recovery.BatchedRecovery` applying changelog batches, on a Faust app that is
never started (no broker) with an in-memory table: offsets read, records at or below them
skipped, buffers applied when full and at the end, standby partitions, unassigned partitions
dropped. Restores against the real broker are covered by the chaos tests (restarts on wiped
data dirs) and measured by the benchmark's (d)."""

from __future__ import annotations

from collections.abc import Iterator

import faust
import pytest
from faust.types import TP, Message, TableT

from lendstream.recovery import BatchedRecovery

CHANGELOG = "t-recovery-loans-changelog"


@pytest.fixture
def setup() -> Iterator[tuple[BatchedRecovery, TableT]]:
    app = faust.App("t-recovery", store="memory://", autodiscover=False)
    table = app.Table("loans", key_type=bytes, value_type=bytes, partitions=2,
                      recovery_buffer_size=3, standby_buffer_size=2)  # fmt: skip
    recovery = BatchedRecovery(app, app.tables)
    for partition in (0, 1):
        recovery.tp_to_table[TP(CHANGELOG, partition)] = table
    yield recovery, table


def messages(partition: int, offsets: range, value: bytes = b"v") -> list[Message]:
    def one(offset: int) -> Message:
        key, raw = b"k%d" % offset, value + b"%d" % offset
        return Message(CHANGELOG, partition, offset, 0.0, 0, {}, key, raw, None)

    return [one(offset) for offset in offsets]


def test_an_active_batch_is_buffered_then_applied_when_the_buffer_is_full(
    setup: tuple[BatchedRecovery, TableT],
) -> None:
    recovery, table = setup
    tp = TP(CHANGELOG, 0)
    recovery.active_tps.add(tp)
    recovery._apply_batch(messages(0, range(0, 2)))
    assert recovery.active_offsets[tp] == 1
    assert dict(table.data) == {}  # 2 < recovery_buffer_size
    recovery._apply_batch(messages(0, range(2, 4)))
    assert recovery.active_offsets[tp] == 3
    assert dict(table.data) == {b"k%d" % n: b"v%d" % n for n in range(4)}


def test_records_at_or_below_the_offset_read_are_skipped(
    setup: tuple[BatchedRecovery, TableT],
) -> None:
    recovery, table = setup
    tp = TP(CHANGELOG, 0)
    recovery.active_tps.add(tp)
    recovery._apply_batch(messages(0, range(0, 3)))
    recovery._apply_batch(messages(0, range(1, 4), value=b"again"))  # a copy fetched after a seek
    recovery.flush_buffers()
    assert table.data[b"k2"] == b"v2"
    assert table.data[b"k3"] == b"again3"
    assert recovery.active_offsets[tp] == 3


def test_the_end_of_recovery_flushes_the_buffers_and_is_signalled(
    setup: tuple[BatchedRecovery, TableT],
) -> None:
    recovery, table = setup
    tp = TP(CHANGELOG, 1)
    recovery.active_tps.add(tp)
    recovery.active_highwaters[tp] = 1
    recovery._set_recovery_started()
    recovery._apply_batch(messages(1, range(0, 1)))
    recovery._maybe_signal_recovery_end()
    assert not recovery.signal_recovery_end.is_set()  # offset 0 of highwater 1
    recovery._apply_batch(messages(1, range(1, 2)))
    recovery._maybe_signal_recovery_end()
    assert recovery.signal_recovery_end.is_set()
    assert not recovery.in_recovery
    assert set(table.data) == {b"k0", b"k1"}


def test_standby_batches_use_the_standby_offsets_and_buffer_size(
    setup: tuple[BatchedRecovery, TableT],
) -> None:
    recovery, table = setup
    tp = TP(CHANGELOG, 1)
    recovery.standby_tps.add(tp)
    recovery._apply_batch(messages(1, range(5, 7)))
    assert recovery.standby_offsets[tp] == 6
    assert tp not in recovery.active_offsets
    assert set(table.data) == {b"k5", b"k6"}  # standby_buffer_size 2: applied


def test_records_of_an_unassigned_partition_are_dropped(
    setup: tuple[BatchedRecovery, TableT],
) -> None:
    recovery, table = setup
    recovery._apply_batch(messages(0, range(0, 5)))
    recovery.flush_buffers()
    assert dict(table.data) == {}
    assert not recovery.active_offsets and not recovery.standby_offsets
