"""Batched delivery: a batch agent's records go to it in batches, in time order across its topics.

Faust delivers every record on its own: per record the drain loop awaits the conductor (two
tasks and an `asyncio.wait`), the conductor decodes it and queues it on the stream, and the
stream hands it on — ~110 to 150 µs of CPU per record here, which capped one worker at about 7,000
records/s whatever the agent did (docs/performance.md). `BatchDeliveryConsumer` keeps Faust's
consumer (group membership, assignment, fetcher, table recovery, offset commits) and replaces
only that loop: the records of a partition that a `BatchQueue` claims are put on it as one list
of Faust events, and the agent takes them from there in batches. A table's changelog records
go, whole batches again, to the table recovery (`ChangelogBatches`, `recovery.BatchedRecovery`);
all other records (other agents' topics) take Faust's own path.

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
- per task (partition number) it hands out records only up to the newest timestamp queued of
  each of the task's partitions that has records on the broker not fetched yet, and holds a
  task back while one of them has none queued (`BatchQueue.take`);
- a full queue stops the fetches of its partitions that have records queued, not of the others
  (`BatchQueue.throttled`): the records a task waits for always come in.

The agent tracks and acks the messages itself (`BatchQueue.take` → `track`, `ack`), so Faust's
wait for unacked messages on a rebalance and its graceful shutdown see what they see with
streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP, AppT, EventT, Message


class BatchQueue:
    """Fetched records of one agent's topics, queued per partition, taken in time order.

    Bounded by `capacity` events at the fetcher: once the queue holds that many, the partitions
    that have records queued are not fetched (`throttled`) until it holds fewer; a partition with
    nothing queued is always fetched, since a task may be waiting for it (`take`). So it holds at
    most `capacity` events plus one fetch per partition. Registered with the app's flow control,
    which empties it when a rebalance starts and again when the flow resumes, as it does the
    streams' queues.
    """

    def __init__(self, app: faust.App, capacity: int) -> None:
        self.app = app
        self.capacity = capacity
        self._queued: dict[TP, deque[EventT]] = {}
        self._size = 0
        self._filled = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._last_taken: dict[TP, int] = {}
        self._held_since: dict[int, float] = {}
        #: The partitions that put records here since the last `clear` (i.e. the assignment).
        self._delivered: set[TP] = set()
        #: Since when (monotonic) records have waited in the queue: set when an empty queue
        #: gets records, and at each take that leaves some behind. `take`'s `within` counts
        #: from here.
        self._waiting_since: float | None = None
        self.topics: set[str] = set()  # the topics whose records come here
        #: Rank of a topic among records with the same timestamp (lower first); see `take`.
        self.tie_order: dict[str, int] = {}
        app.flow_control.manage_queue(self)  # type: ignore[arg-type]

    def clear(self) -> None:
        self._queued.clear()
        self._size = 0
        self._held_since.clear()
        self._delivered.clear()
        self._waiting_since = None
        self._filled.clear()
        self._space.set()

    async def put(self, events: list[EventT]) -> None:
        """Queue `events`: records of one partition, in offset order. Never waits: the bound is
        kept by the fetcher (`throttled`)."""
        if not events:
            return
        if not self._size:
            self._waiting_since = time.monotonic()
        tp = events[0].message.tp
        self._delivered.add(tp)
        self._queued.setdefault(tp, deque()).extend(events)
        self._size += len(events)
        self._filled.set()

    def throttled(self, tp: TP) -> bool:
        """Whether the fetcher should leave `tp` alone for now: the queue is full and already
        holds records of `tp`."""
        return self._size >= self.capacity and bool(self._queued.get(tp))

    async def wait_for_space(self) -> None:
        """Return once the queue holds fewer than `capacity` events."""
        while self._size >= self.capacity:
            self._space.clear()
            await self._space.wait()

    async def take(self, max_events: int, within: float) -> list[EventT]:
        """Up to `max_events` queued events, in time order (`in_time_order`), once any can go:
        when `max_events` are queued, or when the queue's records have waited `within` seconds
        (counted from their arrival, not from the call: a batch that took longer than `within`
        to process is followed at once by the next, made of what arrived meanwhile).

        Per task — one partition number across the co-partitioned topics, i.e. one set of
        loans — only events up to the task's *cutoff* go: the oldest of the newest timestamps
        queued of its partitions that have records on the broker not fetched yet, as Kafka
        Streams chooses records by timestamp. Otherwise, catching up, one topic's partition
        runs ahead of the others (a fetch of `payment-events` spans less time than one of
        `loan-events`), and a repayment is folded before the `LoanPaidOut` appended before it.
        A task one of whose partitions has unfetched records but none queued waits for them
        up to `TASK_IDLE_SECONDS` (`FIRST_FETCH_IDLE_SECONDS` while that partition has
        delivered nothing since the assignment), then goes without. Records with the same timestamp go in
        `tie_order` (the lifecycle's order of the topics).

        Events of an older consumer generation, or taken while the flow is suspended, are
        dropped (not acked: they are fetched again from the committed offsets). The returned
        events' messages are tracked as unacked; `ack` them after processing."""
        while True:
            while not self._size:
                self._filled.clear()
                await self._filled.wait()
            await self._fill(max_events, within)
            events, wait = self._take_aligned(max_events)
            if self._size < self.capacity:
                self._space.set()
            if not events:
                self._filled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._filled.wait(), wait)
                continue
            current = self._current(events)
            if current:
                consumer = self.app.consumer
                for event in current:
                    consumer.track_message(event.message)
                return current

    def _take_aligned(self, max_events: int) -> tuple[list[EventT], float]:
        """The events that may go now (see `take`), removed from the queue, and how long the
        next hold may still wait."""
        cutoffs, wait = self._cutoffs(time.monotonic())
        prefixes = [
            _up_to(queued, cutoffs.get(tp.partition, math.inf))
            for tp, queued in self._queued.items()
        ]  # lazy: only the `max_events` merged first are read
        events = list(itertools.islice(in_time_order(prefixes, self.tie_order), max_events))
        for event in events:
            self._queued[event.message.tp].popleft()
        self._size -= len(events)
        if events:  # what stays behind waits `within` again (held records do not count)
            self._waiting_since = time.monotonic() if self._size else None
        return events, wait

    def _cutoffs(self, now: float) -> tuple[dict[int, float], float]:
        """Per task with queued events, the newest timestamp that may go now (missing: any),
        and how long the next hold may still wait."""
        consumer: Any = self.app.consumer
        queued_tasks = {tp.partition for tp, queued in self._queued.items() if queued}
        cutoffs: dict[int, float] = {}
        first_fetch: set[int] = set()  # tasks awaiting a partition's first records
        for tp in consumer.assignment():
            task = tp.partition
            if tp.topic not in self.topics or task not in queued_tasks:
                continue
            if not _has_unfetched(consumer, tp):
                continue  # all its records are here: it holds nothing back
            queued = self._queued.get(tp)
            frontier = _timestamp(queued[-1]) if queued else -math.inf
            cutoffs[task] = min(cutoffs.get(task, math.inf), frontier)
            if not queued and tp not in self._delivered:
                first_fetch.add(task)
        wait = FIRST_FETCH_IDLE_SECONDS
        for task in queued_tasks:
            cutoff = cutoffs.get(task, math.inf)
            if any(queued and tp.partition == task and _timestamp(queued[0]) <= cutoff
                   for tp, queued in self._queued.items()):  # fmt: skip
                self._held_since.pop(task, None)
                continue
            since = self._held_since.setdefault(task, now)
            limit = FIRST_FETCH_IDLE_SECONDS if task in first_fetch else TASK_IDLE_SECONDS
            if now - since >= limit:
                cutoffs[task] = math.inf  # waited long enough: go without
            else:
                wait = min(wait, limit - (now - since))
        return cutoffs, max(wait, 0.01)

    async def _fill(self, max_events: int, within: float) -> None:
        """Return when `max_events` are queued or the queued records have waited `within`."""
        since = time.monotonic() if self._waiting_since is None else self._waiting_since
        deadline = since + within
        while self._size < max_events:
            remaining = deadline - time.monotonic()
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


#: How long a task is held back for a partition that has records on the broker but none queued
#: (`BatchQueue.take`); a task that goes without sends its other topics ahead (a
#: `PayoutRequested` before its `LoanApproved`), and those events park in `dead_letters` until
#: released.
TASK_IDLE_SECONDS = 0.5
#: The same for a partition none of whose records came since the assignment (start-up, a
#: rebalance): the first fetches of every partition took up to 1.3 s here. With 0.5 s for them
#: too, the catch-up of 200,000 events parked 2,570-13,161 events in 5 of 8 runs, always after
#: such a give-up at start-up; with 5 s none in 3 of 3 (docs/performance.md). The short limit
#: stays for the rest: a partition whose high watermark stays above what it delivers (a
#: transaction marker at its end, on Apache Kafka) would hold its task in every quiet spell.
FIRST_FETCH_IDLE_SECONDS = 5.0


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


async def _first_space(queues: set[BatchQueue], timeout: float) -> None:
    """Return once one of `queues` has room, or after `timeout` seconds."""
    waiters = [asyncio.ensure_future(queue.wait_for_space()) for queue in queues]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _has_unfetched(consumer: Any, tp: TP) -> bool:
    """Whether the broker has records of `tp` after those fetched (unknown counts as yes)."""
    highwater = consumer.highwater(tp)
    if highwater is None:
        return True
    read = consumer._read_offset.get(tp)
    return bool(highwater > (read + 1 if read is not None else 0))


def in_time_order(
    partitions: Sequence[Iterable[EventT]], tie_order: dict[str, int] | None = None
) -> Iterator[EventT]:
    """The events of `partitions` (one iterable per partition, in offset order), lazily: each
    partition's kept in offset order, the partitions merged by record timestamp; records with
    the same timestamp by their topic's rank in `tie_order` (lower first).

    Kafka orders nothing across topics; a loan's events on `loan-events` and `payout-events`
    are folded in the order they were appended, as Kafka Streams does by timestamp. Anything
    still out of order is the domain's to handle (parking, lifecycle checks)."""
    if len(partitions) == 1:
        return iter(partitions[0])
    rank = tie_order or {}
    return heapq.merge(*partitions, key=lambda e: (_timestamp(e), rank.get(e.message.topic, 0)))


def _up_to(events: Iterable[EventT], cutoff: float) -> Iterator[EventT]:
    """The leading `events` with a timestamp at or before `cutoff`, lazily."""
    return itertools.takewhile(lambda event: _timestamp(event) <= cutoff, events)


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
                records, active = await self._next_records(1.0, queues)
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

    async def _next_records(
        self, timeout: float, queues: dict[str, BatchQueue]
    ) -> tuple[dict[TP, list[Any]], set[TP] | None]:  # pragma: no cover - needs a broker
        """Faust's `_wait_next_records`, without the partitions a full batch queue throttles
        (`BatchQueue.throttled`): aiokafka keeps the one fetch it may hold of such a partition
        and fetches it no further until it is asked for again. When every active partition is
        throttled, it waits (up to `timeout`) for room in the queues instead."""
        self_: Any = self
        if self_.app.client_only:
            return await self_._wait_next_records(timeout)
        if not self_.flow_active:
            await self_.wait(self_.can_resume_flow)
        try:
            self_.not_waiting_next_records.set()
            active: set[TP] = self_._get_active_partitions()
            full = {
                tp for tp in active
                if (queue := queues.get(tp.topic)) is not None and queue.throttled(tp)
            }  # fmt: skip
            wanted = active - full if full else active
            if wanted:
                records = await self_._getmany(active_partitions=wanted, timeout=timeout)
                return records, active
            if active:
                await _first_space({queues[tp.topic] for tp in full}, timeout)
            else:
                await self_.sleep(1)
            return {}, active
        finally:
            self_.not_waiting_next_records.set()

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
