"""Batched delivery: each fetched batch of a batch agent's topics goes to the agent whole.

Faust delivers every record on its own: per record the drain loop awaits the conductor (two
tasks and an `asyncio.wait`), the conductor decodes it and queues it on the stream, and the
stream hands it on — ~110 to 150 µs of CPU per record here, which capped one worker at about 7,000
records/s whatever the agent did (docs/performance.md). `BatchDeliveryConsumer` keeps Faust's
consumer (group membership, assignment, fetcher, table recovery, offset commits) and replaces
only that loop: the records of a partition that a `BatchQueue` claims are put on it as one list
of Faust events. A table's changelog records go, whole batches again, to the table recovery
(`ChangelogBatches`, `recovery.BatchedRecovery`); all other records (other agents' topics) take
Faust's own path.

Offsets are committed from what the agent has processed, not from Faust's acks: for a batch
agent's partition the committable offset is one past the last offset of the last batch it
processed (`mark_processed`), so no commit ever passes a record that was not processed —
whatever happened to the fetched records in between (a queue emptied by a rebalance, a delivery
abandoned by a shutdown). The contiguity guard still checks every batch against PostgreSQL.

What the loop keeps from Faust's, so that rebalances and recovery behave as before:
- records of paused partitions, or fetched while the flow is stopped, are not delivered (with
  the flow stopped it seeks back to the committed offsets);
- the read offset per partition: records fetched again after a seek are dropped;
- gaps in a partition's offsets are registered for the committer of the other topics;
  `commit_every` is honoured;
- delivery is abandoned when the flow is suspended (a rebalance), as Faust's is.

What it adds, found by the chaos tests:
- a batch agent's records carry the consumer generation they were *fetched* in (Faust tags
  them when it converts them, which can be after a rebalance); older ones are dropped;
- `BatchQueue` never hands out a record at or below the last one it handed out of the same
  partition (a copy fetched again after a seek while the first was still queued);
- per task (partition number) it holds records back while another of the task's partitions
  has records on the broker not fetched yet (`BatchQueue.take`).

The agent tracks and acks the messages itself (`BatchQueue.take` → `track`, `ack`), so Faust's
wait for unacked messages on a rebalance and its graceful shutdown see what they see with
streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP, AppT, EventT, Message


class BatchQueue:
    """Whole fetched batches (one list of events per partition and fetch) for one agent.

    Bounded by `capacity` events (a put waits while the queue holds that many or more).
    Registered with the app's flow control, which empties it when a rebalance starts and again
    when the flow resumes, as it does the streams' queues.
    """

    def __init__(self, app: faust.App, capacity: int) -> None:
        self.app = app
        self.capacity = capacity
        self._batches: deque[list[EventT]] = deque()
        self._size = 0
        self._filled = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._last_taken: dict[TP, int] = {}
        self._held_since: dict[int, float] = {}
        self._held_size = 0
        self.topics: set[str] = set()  # the topics whose batches come here
        app.flow_control.manage_queue(self)  # type: ignore[arg-type]

    def clear(self) -> None:
        self._batches.clear()
        self._size = self._held_size = 0
        self._held_since.clear()
        self._filled.clear()
        self._space.set()

    async def put(self, events: list[EventT]) -> None:
        # Held batches do not count: the records a held task waits for may be behind this put.
        while self._size - self._held_size >= self.capacity:
            self._space.clear()
            await self._space.wait()
        self._batches.append(events)
        self._size += len(events)
        self._filled.set()

    async def take(self, max_events: int, within: float) -> list[EventT]:
        """The queued batches, whole, up to `max_events` (at least one batch): once any is
        there, after waiting up to `within` seconds for `max_events` to be queued, merged in
        time order (`in_time_order`).

        Per task — one partition number across the co-partitioned topics, i.e. one set of
        loans — the batches are held back (up to `TASK_IDLE_SECONDS`) while another of the
        task's partitions has records on the broker that have not been fetched yet, as Kafka
        Streams does: otherwise, catching up, a `LoanCanceled` on `loan-events` could be folded
        before the `LoanPaidOut` appended before it on `payout-events`, only because the two
        partitions' fetches drift apart.

        Events of an older consumer generation, or taken while the flow is suspended, are
        dropped (not acked: they are fetched again from the committed offsets). The returned
        events' messages are tracked as unacked; `ack` them after processing."""
        while True:
            while not self._batches:
                self._filled.clear()
                await self._filled.wait()
            await self._fill(max_events, within)
            batches: list[list[EventT]] = []
            taken = self._held_size = 0
            while self._batches and (not taken or taken + len(self._batches[0]) <= max_events):
                batch = self._batches.popleft()
                self._size -= len(batch)
                taken += len(batch)
                batches.append(batch)
            batches, wait = self._hold_lagging_tasks(batches)
            if self._size - self._held_size < self.capacity:
                self._space.set()
            if not batches:
                self._filled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._filled.wait(), wait)
                continue
            current = self._current(in_time_order(batches))
            if current:
                consumer = self.app.consumer
                for event in current:
                    consumer.track_message(event.message)
                return current

    def _hold_lagging_tasks(self, batches: list[list[EventT]]) -> tuple[list[list[EventT]], float]:
        """`batches` without those of tasks to hold (put back at the head of the queue, in
        order), and how long the next hold may still wait."""
        consumer: Any = self.app.consumer
        now = time.monotonic()
        present = {b[0].message.tp for b in batches} | {b[0].message.tp for b in self._batches}
        lagging_tasks = {
            tp.partition for tp in consumer.assignment()
            if tp.topic in self.topics and tp not in present and _has_unfetched(consumer, tp)
        }  # fmt: skip
        held: list[list[EventT]] = []
        released: list[list[EventT]] = []
        wait = TASK_IDLE_SECONDS
        for batch in batches:
            task = batch[0].message.partition
            if task in lagging_tasks:
                since = self._held_since.setdefault(task, now)
                if now - since < TASK_IDLE_SECONDS:
                    held.append(batch)
                    wait = min(wait, TASK_IDLE_SECONDS - (now - since))
                    continue
            self._held_since.pop(task, None)
            released.append(batch)
        for batch in reversed(held):
            self._batches.appendleft(batch)
            self._size += len(batch)
            self._held_size += len(batch)
        return released, max(wait, 0.01)

    async def _fill(self, max_events: int, within: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self._size < max_events:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._filled.clear()
            try:
                await asyncio.wait_for(self._filled.wait(), remaining)
            except TimeoutError:
                return

    def _current(self, events: list[EventT]) -> list[EventT]:
        """`events` without those of an older generation or taken while the flow is
        suspended, and without any record at or below the last one taken of its partition (a
        copy fetched again after a seek: it was processed already, or the process died)."""
        if not self.app.flow_control.is_active():
            return []
        generation = self.app.consumer_generation_id
        last_taken = self._last_taken
        current = []
        for event in events:
            message = event.message
            tp = message.tp
            if message.generation_id == generation and message.offset > last_taken.get(tp, -1):
                last_taken[tp] = message.offset
                current.append(event)
        return current

    def ack(self, events: Iterable[EventT]) -> None:
        """Mark `events` processed: acked for Faust's wait on a rebalance or shutdown, and
        their partitions committable up to their last offset (`BatchDeliveryConsumer`)."""
        consumer: Any = self.app.consumer
        ends: dict[TP, int] = {}
        for event in events:
            message = event.message
            consumer.ack(message)
            ends[message.tp] = max(ends.get(message.tp, -1), message.offset)
        consumer.mark_processed(ends)

    def wrap(self, message: Message, generation: int) -> EventT:
        message.generation_id = generation
        return faust.Event(self.app, message.key, message.value, message.headers, message)


TASK_IDLE_SECONDS = 0.5


class ChangelogBatches:
    """Whole fetched batches of changelog records (one list of messages per partition and
    fetch), for `recovery.BatchedRecovery`. Bounded by `capacity` records; emptied by the flow
    control (on a rebalance and when the flow resumes), as Faust's changelog queue is."""

    def __init__(self, app: AppT, capacity: int) -> None:
        self.capacity = capacity
        self._batches: deque[list[Message]] = deque()
        self._size = 0
        self._filled = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        app.flow_control.manage_queue(self)  # type: ignore[arg-type]

    def clear(self) -> None:
        self._batches.clear()
        self._size = 0
        self._filled.clear()
        self._space.set()

    async def put(self, messages: list[Message]) -> None:
        while self._size >= self.capacity:
            self._space.clear()
            await self._space.wait()
        self._batches.append(messages)
        self._size += len(messages)
        self._filled.set()

    async def get(self, timeout: float) -> list[Message] | None:
        """The oldest batch, or None when none came within `timeout` seconds."""
        if not self._batches:
            self._filled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._filled.wait(), timeout)
            if not self._batches:
                return None
        batch = self._batches.popleft()
        self._size -= len(batch)
        if self._size < self.capacity:
            self._space.set()
        return batch


def _has_unfetched(consumer: Any, tp: TP) -> bool:
    """Whether the broker has records of `tp` after those fetched (unknown counts as yes)."""
    highwater = consumer.highwater(tp)
    if highwater is None:
        return True
    read = consumer._read_offset.get(tp)
    return bool(highwater > (read + 1 if read is not None else 0))


def in_time_order(batches: list[list[EventT]]) -> list[EventT]:
    """The events of `batches` (each from one partition, in offset order), each partition's
    kept in offset order, the partitions merged by record timestamp.

    Kafka orders nothing across topics; a loan's events on `loan-events` and `payout-events`
    are folded in the order they were appended where a batch holds both, as Faust's round-robin
    delivery roughly did (and Kafka Streams does by timestamp). Anything still out of order is
    the domain's to handle (parking, lifecycle checks)."""
    by_partition: dict[tuple[str, int], list[EventT]] = {}
    for batch in batches:
        message = batch[0].message
        by_partition.setdefault((message.topic, message.partition), []).extend(batch)
    if len(by_partition) == 1:
        return next(iter(by_partition.values()))
    return list(heapq.merge(*by_partition.values(), key=_timestamp))


def _timestamp(event: EventT) -> float:
    return event.message.timestamp or 0.0


class BatchDeliveryConsumer:
    """Mixin for a Faust `Consumer`: the drain loop of the module docstring. The app names its
    queues by topic in `batch_queues`."""

    _processed: dict[TP, int] | None = None

    def mark_processed(self, ends: dict[TP, int]) -> None:
        """Record the last processed offset per partition (see the module docstring)."""
        if self._processed is None:
            self._processed = {}
        processed = self._processed
        for tp, offset in ends.items():
            if offset > processed.get(tp, -1):
                processed[tp] = offset

    def _new_offset(self, tp: TP) -> int | None:
        self_: Any = self
        if tp.topic not in getattr(self_.app, "batch_queues", {}):
            return super()._new_offset(tp)  # type: ignore[misc]
        self_._acked[tp].clear()  # the acks only serve Faust's wait for unacked messages
        self_._acked_index[tp].clear()
        last = (self._processed or {}).get(tp)
        if last is None:
            return None
        committed = self_._committed_offset.get(tp)
        return last + 1 if committed is None or last + 1 > committed else None

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        self_: Any = self
        queues: dict[str, BatchQueue] = getattr(self_.app, "batch_queues", {})
        if not queues:
            return await super()._drain_messages(fetcher)  # type: ignore[misc]
        consumer_stopped = self_._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self_.diag.set_flag(CONSUMER_FETCHING)
                fetched_in = self_.app.consumer_generation_id
                records, active = await self_._wait_next_records(1.0)
                await asyncio.sleep(0)
                if records and not self_.should_stop:
                    await self._deliver(records, active, queues, fetched_in)
                self_.diag.unset_flag(CONSUMER_FETCHING)
        except self_.consumer_stopped_errors:
            if self_.transport.app.should_stop:
                self_.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self_.transport.app.should_stop:
                self_.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self_.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self_.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver(
        self, records: dict[TP, list[Any]], active: set[TP] | None,
        queues: dict[str, BatchQueue], fetched_in: int,
    ) -> None:  # fmt: skip
        """Hand `records` on. A batch agent's records fetched in an older consumer generation
        than the current one are dropped here, unread (the rebalance seeks their partitions
        back to the committed offsets); they carry the generation they were fetched in, so
        that the agent drops them too if a rebalance comes before it takes them."""
        self_: Any = self
        app = self_.app
        if not self_.flow_active:
            try:
                await self_.perform_seek()
            except Exception as exc:  # as Faust's getmany: logged, the next fetch retries
                self_.log.warning("exception performing seek when flow not active %s", exc)
            return
        generation = app.consumer_generation_id
        for tp, batch in records.items():
            if not self_.flow_active or app.consumer_generation_id != generation:
                return
            if not (active is None or tp in active or tp in self_._buffered_partitions):
                continue
            app.monitor.track_tp_end_offset(tp, self_.highwater(tp))
            queue = queues.get(tp.topic)
            fresh = await self._fresh(tp, batch, register_gaps=queue is None)
            if not fresh:
                continue
            changelogs = self._changelog_batches(tp)
            if changelogs is not None:
                messages = [self_._to_message(tp, record) for record in fresh]
                await self_.wait_first(changelogs.put(messages), self_.suspend_flow.wait())
                self_._read_offset[tp] = fresh[-1].offset
                continue
            if queue is None:
                await self._deliver_one_by_one(tp, fresh)
                continue
            if fetched_in != generation:
                continue
            events = [queue.wrap(self_._to_message(tp, record), fetched_in) for record in fresh]
            await self_.wait_first(queue.put(events), self_.suspend_flow.wait())
            self_._read_offset[tp] = fresh[-1].offset

    def _changelog_batches(self, tp: TP) -> ChangelogBatches | None:
        """Where a table's changelog records go whole: the recovery's batches, when the app's
        recovery takes them (`recovery.BatchedRecovery`); otherwise (None) Faust's path."""
        self_: Any = self
        tables = self_.app.tables
        batches: ChangelogBatches | None = getattr(tables.recovery, "changelog_batches", None)
        if batches is None or tp.topic not in tables.changelog_topics:
            return None
        return batches

    async def _fresh(self, tp: TP, batch: list[Any], register_gaps: bool) -> list[Any]:
        """The records not read yet; registers offset gaps if asked (topics committed from
        Faust's acks) and commits every `commit_every` acks, as Faust's loop does per record."""
        self_: Any = self
        read_offset = self_._read_offset.get(tp)
        fresh = [r for r in batch if read_offset is None or r.offset >= read_offset]
        if fresh and register_gaps and self_.app.topics.acks_enabled_for(tp.topic):
            previous = read_offset
            for record in fresh:
                if previous and record.offset - previous > 1:
                    await self_._add_gap(tp, previous + 1, record.offset)
                previous = record.offset
        commit_every = self_._commit_every
        if fresh and commit_every is not None and self_._n_acked >= commit_every:
            self_._n_acked = 0
            await self_.commit()
        return fresh

    async def _deliver_one_by_one(self, tp: TP, records: list[Any]) -> None:
        self_: Any = self
        callback = self_.callback
        for n, record in enumerate(records, 1):
            if n % 100 == 0:
                await asyncio.sleep(0)
            await self_.wait_first(
                callback(self_._to_message(tp, record)), self_.suspend_flow.wait()
            )
            self_._read_offset[tp] = record.offset
