"""`lendstream.delivery.BatchQueue` and `in_time_order` with a stand-in for the Faust app (no
broker): order, the per-partition guard against records taken twice, generations, the cutoff
and the hold of a task whose other partitions have unfetched records, and the bound. The consumer side is covered with the
real broker by the chaos and integration tests run with `LENDSTREAM_BATCHED_DELIVERY=true`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import faust
import pytest
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from lendstream import delivery
from lendstream.delivery import BatchQueue, ChangelogBatches, in_time_order


@dataclass
class FakeMessage:
    topic: str
    partition: int
    offset: int
    timestamp: float
    generation_id: int = 1
    key: bytes = b"k"
    value: bytes = b"v"
    headers: Any = None

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass
class FakeConsumer:
    assigned: set[TP] = field(default_factory=set)
    highwaters: dict[TP, int] = field(default_factory=dict)
    _read_offset: dict[TP, int] = field(default_factory=dict)
    tracked: list[Any] = field(default_factory=list)

    def assignment(self) -> set[TP]:
        return self.assigned

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters.get(tp)

    def track_message(self, message: Any) -> None:
        self.tracked.append(message)


class FakeApp:
    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer
        self.flow_control = FlowControlEvent(initially_suspended=False)
        self.consumer_generation_id = 1


def batch(topic: str, partition: int, offsets: range, t0: float = 0.0, gen: int = 1) -> list[Any]:
    """Events of one fetch: offsets `offsets`, timestamp `t0 + offset`, fetched in `gen`."""
    messages = [FakeMessage(topic, partition, o, t0 + o, generation_id=gen) for o in offsets]
    return [faust.Event(None, m.key, m.value, None, m) for m in messages]  # type: ignore[arg-type]


def offsets(events: list[Any]) -> list[tuple[str, int]]:
    return [(e.message.topic, e.message.offset) for e in events]


def test_in_time_order_merges_partitions_by_timestamp_keeping_each_partitions_order() -> None:
    a = batch("loan-events", 0, range(0, 3), t0=10)  # timestamps 10, 11, 12
    b = batch("payout-events", 0, range(0, 2), t0=10.5)  # 10.5, 11.5
    late = batch("loan-events", 0, range(3, 4), t0=0)  # offset 3, timestamp 3: still after 2
    merged = list(in_time_order([a + late, b]))
    assert offsets(merged) == [
        ("loan-events", 0), ("payout-events", 0), ("loan-events", 1), ("payout-events", 1),
        ("loan-events", 2), ("loan-events", 3),
    ]  # fmt: skip


def test_in_time_order_breaks_ties_by_the_topics_rank() -> None:
    payout = batch("payout-events", 0, range(0, 1), t0=5)
    loan = batch("loan-events", 0, range(0, 1), t0=5)
    merged = list(in_time_order([payout, loan], {"loan-events": 0, "payout-events": 1}))
    assert offsets(merged) == [("loan-events", 0), ("payout-events", 0)]


def make_queue(consumer: FakeConsumer, capacity: int = 100) -> BatchQueue:
    queue = BatchQueue(FakeApp(consumer), capacity=capacity)  # type: ignore[arg-type]
    queue.topics.update({"loan-events", "payout-events"})
    queue.tie_order = {"loan-events": 0, "payout-events": 1}
    return queue


async def test_a_task_goes_up_to_the_newest_record_queued_of_each_partition_still_fetching() -> (
    None
):
    loans, payouts = TP("loan-events", 0), TP("payout-events", 0)
    consumer = FakeConsumer(assigned={loans, payouts}, highwaters={loans: 50, payouts: 50})
    consumer._read_offset.update({loans: 9, payouts: 2})
    queue = make_queue(consumer)
    await queue.put(batch("loan-events", 0, range(0, 10)))  # timestamps 0..9
    await queue.put(batch("payout-events", 0, range(0, 3)))  # 0..2; more on the broker
    taken = await queue.take(100, within=0)
    assert offsets(taken) == [
        ("loan-events", 0), ("payout-events", 0), ("loan-events", 1), ("payout-events", 1),
        ("loan-events", 2), ("payout-events", 2),
    ]  # fmt: skip

    consumer._read_offset[payouts] = 5
    await queue.put(batch("payout-events", 0, range(3, 6)))  # 3..5
    assert offsets(await queue.take(2, within=0)) == [("loan-events", 3), ("payout-events", 3)]
    assert offsets(await queue.take(100, within=0)) == [
        ("loan-events", 4), ("payout-events", 4), ("loan-events", 5), ("payout-events", 5),
    ]  # fmt: skip

    consumer.highwaters[payouts] = 6  # all of payout-events:0 fetched: nothing holds loans back
    assert offsets(await queue.take(100, within=0)) == [("loan-events", o) for o in range(6, 10)]


async def test_a_full_queue_throttles_only_the_partitions_it_holds_records_of() -> None:
    loans, payouts = TP("loan-events", 0), TP("payout-events", 0)
    queue = make_queue(FakeConsumer(assigned={loans, payouts}), capacity=5)
    await queue.put(batch("loan-events", 0, range(0, 6)))
    assert queue.throttled(loans)
    assert not queue.throttled(payouts)  # a task may be waiting for it
    space = asyncio.ensure_future(queue.wait_for_space())
    await asyncio.sleep(0.01)
    assert not space.done()
    assert len(await queue.take(3, within=0)) == 3
    await asyncio.wait_for(space, 1)
    assert not queue.throttled(loans)


async def test_records_taken_once_per_partition_and_old_generations_dropped() -> None:
    consumer = FakeConsumer()
    queue = make_queue(consumer)
    await queue.put(batch("loan-events", 0, range(0, 5)))
    assert offsets(await queue.take(100, within=0)) == [("loan-events", o) for o in range(5)]
    await queue.put(batch("loan-events", 0, range(3, 8)))  # fetched again after a seek
    await queue.put(batch("loan-events", 1, range(0, 2), gen=0))  # before the last rebalance
    assert offsets(await queue.take(100, within=0)) == [("loan-events", o) for o in range(5, 8)]
    assert len(consumer.tracked) == 8


async def test_a_task_waits_for_its_partition_with_unfetched_records_then_goes_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "TASK_IDLE_SECONDS", 0.3)
    loans, payouts = TP("loan-events", 0), TP("payout-events", 0)
    other = TP("loan-events", 1)
    consumer = FakeConsumer(assigned={loans, payouts, other}, highwaters={payouts: 5})
    queue = make_queue(consumer)
    await queue.put(batch("loan-events", 0, range(0, 2), t0=10))
    await queue.put(batch("loan-events", 1, range(0, 1)))
    taken = await queue.take(100, within=0)
    assert [e.message.tp for e in taken] == [other]  # partition 1 goes; partition 0 is held

    async def fetch_payouts() -> None:
        await asyncio.sleep(0.05)
        consumer._read_offset[payouts] = 4
        await queue.put(batch("payout-events", 0, range(0, 5), t0=0))

    fetching = asyncio.ensure_future(fetch_payouts())
    taken = await asyncio.wait_for(queue.take(100, within=0), 1)
    await fetching
    assert offsets(taken) == [
        *[("payout-events", o) for o in range(5)], ("loan-events", 0), ("loan-events", 1),
    ]  # fmt: skip

    await queue.put(batch("loan-events", 0, range(2, 3), t0=20))
    consumer.highwaters[payouts] = 9  # more on the broker, never fetched: wait, then go
    started = asyncio.get_running_loop().time()
    taken = await asyncio.wait_for(queue.take(100, within=0), 2)
    assert offsets(taken) == [("loan-events", 2)]
    assert asyncio.get_running_loop().time() - started >= 0.25


async def test_a_partition_that_delivered_nothing_since_the_assignment_is_awaited_longer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At start-up or after a rebalance a partition's first fetch can take seconds: its task
    waits up to `FIRST_FETCH_IDLE_SECONDS` for it, and only `TASK_IDLE_SECONDS` once it has
    delivered records (until the next `clear`, as on a rebalance)."""
    monkeypatch.setattr(delivery, "TASK_IDLE_SECONDS", 0.1)
    monkeypatch.setattr(delivery, "FIRST_FETCH_IDLE_SECONDS", 0.6)
    loans, payouts = TP("loan-events", 0), TP("payout-events", 0)
    consumer = FakeConsumer(assigned={loans, payouts}, highwaters={payouts: 5})
    queue = make_queue(consumer)
    loop = asyncio.get_running_loop()

    async def held_for(first: int) -> float:
        """How long a take of loan-events:0's next record waits for payout-events:0."""
        await queue.put(batch("loan-events", 0, range(first, first + 1), t0=10))
        consumer._read_offset[loans], consumer.highwaters[loans] = first, first + 1
        started = loop.time()
        assert offsets(await asyncio.wait_for(queue.take(100, within=0), 2)) == [
            ("loan-events", first)
        ]
        return loop.time() - started

    assert await held_for(0) >= 0.55  # never delivered: the long limit
    await queue.put(batch("payout-events", 0, range(0, 2), t0=0))
    consumer._read_offset[payouts] = 1
    assert offsets(await queue.take(100, within=0)) == [("payout-events", 0), ("payout-events", 1)]
    short = await held_for(1)  # delivered since: the short limit
    assert 0.05 <= short < 0.5
    queue.clear()  # a rebalance
    assert await held_for(2) >= 0.55


async def test_within_counts_from_the_records_arrival_not_from_the_take() -> None:
    queue = make_queue(FakeConsumer())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await queue.put(batch("loan-events", 0, range(0, 2)))
    assert len(await queue.take(100, within=0.2)) == 2  # nothing more came: waited `within`
    assert loop.time() - started >= 0.19

    await queue.put(batch("loan-events", 0, range(2, 4)))
    await asyncio.sleep(0.25)  # as if the last batch took longer than `within` to process
    started = loop.time()
    assert len(await queue.take(100, within=0.2)) == 2  # these have waited long enough
    assert loop.time() - started < 0.15

    await queue.put(batch("loan-events", 0, range(4, 6)))
    assert len(await queue.take(1, within=0.2)) == 1  # full at once
    started = loop.time()
    assert len(await queue.take(100, within=0.2)) == 1  # what stayed behind waits again
    assert loop.time() - started >= 0.19


async def test_changelog_batches_come_out_whole_in_order_and_bounded() -> None:
    app = FakeApp(FakeConsumer())
    batches = ChangelogBatches(app, capacity=3)  # type: ignore[arg-type]
    first = [FakeMessage("c", 0, n, 0.0) for n in range(2)]
    second = [FakeMessage("c", 1, n, 0.0) for n in range(2)]
    await batches.put(first)  # type: ignore[arg-type]
    await batches.put(second)  # type: ignore[arg-type]  # 4 >= capacity: the next put waits
    third = asyncio.ensure_future(batches.put([FakeMessage("c", 0, 2, 0.0)]))  # type: ignore[list-item]
    await asyncio.sleep(0.01)
    assert not third.done()
    assert await batches.get(timeout=1) == first
    await asyncio.wait_for(third, 1)
    assert await batches.get(timeout=1) == second
    assert [m.offset for m in await batches.get(timeout=1) or []] == [2]
    assert await batches.get(timeout=0.01) is None


async def test_changelog_batches_are_emptied_when_the_flow_resumes() -> None:
    app = FakeApp(FakeConsumer())
    batches = ChangelogBatches(app, capacity=10)  # type: ignore[arg-type]
    await batches.put([FakeMessage("c", 0, 0, 0.0)])  # type: ignore[list-item]
    app.flow_control.suspend()
    app.flow_control.resume()  # a rebalance: what was fetched before is fetched again
    assert await batches.get(timeout=0.01) is None
