"""What every batching agent needs: turning Faust events into `Message`s, and table access for
a given message outside Faust's per-message iteration.

Faust routes a table read or write to the partition of the *current event*; in a batch that
spans partitions we set the current event explicitly to a message of the key being touched, so
each key's value (and its changelog record) lands in its own partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import faust
from faust.streams import _current_event
from faust.types import TP, EventT, StreamT
from rocksdict import WriteBatch

from lendstream.delivery import BatchQueue
from lendstream.domain.sequencing import Message, Position
from lendstream.topics.codec import TopicSpec, key_text


@contextlib.contextmanager
def as_current(event: EventT) -> Iterator[None]:
    """Make `event` Faust's current event for table access inside the block."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def key_of(event: EventT) -> str:
    """The record's key as text (`codec.key_text`)."""
    raw_key = event.message.key
    return key_text(raw_key) if isinstance(raw_key, bytes) else str(raw_key or "")


def position_of(event: EventT) -> Position:
    msg = event.message
    return Position(msg.topic, msg.partition, msg.offset)


def to_message(event: EventT, specs: Mapping[str, TopicSpec]) -> Message:
    """Decode one Faust event with its topic's codec (never raises)."""
    msg = event.message
    value = msg.value if isinstance(msg.value, bytes | None) else bytes(msg.value)
    return Message(
        position=position_of(event),
        key=key_of(event),
        timestamp=msg.timestamp,
        decoded=specs[msg.topic].decode(msg.key, value),
        raw=value,
        headers=_headers(msg.headers),
    )


def _headers(
    headers: Mapping[Any, Any] | Iterable[tuple[Any, Any]] | None,
) -> tuple[tuple[str, bytes], ...]:
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(k), v if isinstance(v, bytes) else str(v).encode()) for k, v in items)


log = logging.getLogger(__name__)
FAIL_STOP_EXIT_CODE = 70


def fail_stop(what: str, reason: str | None = None) -> NoReturn:
    """End the process at once after an unexpected error in a batch (or a `reason` found by a
    check outside one).

    A Faust agent that raises gets its messages acked, which would lose the batch. Exiting
    without any further ack or commit makes Kafka redeliver the batch to the next worker (or to
    this one once it is restarted); idempotency makes that safe.
    """
    log = logging.getLogger("lendstream.agents")
    if reason is None:
        log.critical(
            "unexpected error in %s; exiting without acking the batch", what, exc_info=True
        )
    else:
        log.critical(
            "%s: %s; exiting so that the restart reads again from the committed offsets",
            what,
            reason,
        )
    logging.shutdown()
    os._exit(FAIL_STOP_EXIT_CODE)


def partition_ends(events: list[EventT]) -> dict[tuple[str, int], int]:
    """Highest offset per (topic, partition) in a batch."""
    ends: dict[tuple[str, int], int] = {}
    for event in events:
        msg = event.message
        tp = (msg.topic, msg.partition)
        ends[tp] = max(ends.get(tp, -1), msg.offset)
    return ends


#: `producer.send(topic, key, value, partition)` returning a delivery future (Faust's producer).
Send = Callable[[str, bytes, bytes, int | None], Awaitable[Awaitable[Any]]]


class TableWriter:
    """Writes a batch's changed values to a Faust table as Faust would, but once per batch:
    one RocksDB write batch per partition, the changelog records straight to the producer (same
    topic, key, value and partition as `Table.__setitem__` sends, so recovery and standbys are
    unchanged), and the persisted changelog offset recorded once per partition when Kafka has
    acknowledged them (in the background, as Faust does).

    Faust's own path costs a `FutureMessage`, a producer-buffer hand-off, a publish callback
    and a RocksDB write of the offset per record — about a fifth of the worker's CPU when every
    event changes its loan (docs/performance.md). A crash before the records are acknowledged
    leaves the changelog behind the local database, as with Faust; the processors take
    PostgreSQL's newer copy in that case (`load_states`).
    """

    def __init__(self, table: faust.Table, send: Send) -> None:
        self.table = table
        self.send = send
        self._pending: set[asyncio.Task[None]] = set()

    async def write(self, values: Mapping[int, list[tuple[bytes, bytes]]]) -> None:
        """Store `values` (partition → [(key, value)]) and send their changelog records."""
        store: Any = self.table.data
        topic = self.table.changelog_topic.get_topic_name()
        key_index = store._key_index
        for partition, items in values.items():
            batch = WriteBatch(raw_mode=True)
            for key, value in items:
                batch.put(key, value)
                key_index[key] = partition
            store._db_for_partition(partition).write(batch)
        acks = [
            (partition, await self.send(topic, key, value, partition))
            for partition, items in values.items()
            for key, value in items
        ]
        if acks:
            task = asyncio.ensure_future(self._persist(topic, acks))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _persist(self, topic: str, acks: list[tuple[int, Awaitable[Any]]]) -> None:
        store: Any = self.table.data
        offsets: dict[int, int] = {}
        for partition, ack in acks:
            try:
                metadata = await ack
            except Exception as exc:  # the record may be lost: as Faust, do not record it
                log.warning("changelog record for %s[%d] not sent: %s", topic, partition, exc)
                return
            offsets[partition] = max(offsets.get(partition, -1), metadata.offset)
        for partition, offset in offsets.items():
            store.set_persisted_offset(TP(topic, partition), offset)


def by_partition(
    values: Mapping[str, bytes], events_by_key: Mapping[str, EventT]
) -> dict[int, list[tuple[bytes, bytes]]]:
    """`values` by key → partition → [(key, value)], each key in the partition of its event."""
    grouped: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in values.items():
        partition = events_by_key[key].message.partition
        grouped.setdefault(partition, []).append((key.encode(), value))
    return grouped


S = TypeVar("S")
FetchNewer = Callable[[list[str], list[int]], Awaitable[list[Any]]]


#: Messages (or keys) handled between two yields to the event loop in the long loops of a
#: batch, so that the previous batch's commit moves on while the next batch is prepared: each
#: of its statements waits for a yield. Every 250 messages, catch-up was ~10% faster than
#: unpipelined, every 50 ~20% (docs/performance.md).
YIELD_EVERY = 50


async def load_states(
    table: faust.Table, events_by_key: Mapping[str, EventT], decode: Callable[[str, bytes | None], S],
    seq_of: Callable[[S], int], fetch_newer: FetchNewer, key_column: str,
    unwritten: Sequence[Mapping[str, bytes]] = (),
) -> tuple[dict[str, S], set[str]]:  # fmt: skip
    """Each key's state: the table's (read as the key's own event, so from its partition), or
    PostgreSQL's copy where that one has a higher `seq` (the table can be behind after a
    SIGKILL: its changelog loses what was still in the producer's buffer). `fetch_newer(keys,
    seqs)` returns rows with `key_column` and `state`. Also returns the keys whose state was
    taken from PostgreSQL."""
    states = {}
    for n, (key, event) in enumerate(events_by_key.items(), 1):
        raw = _newest_unwritten(unwritten, key)
        if raw is None:
            with as_current(event):
                raw = table.get(key.encode())
        states[key] = decode(key, raw)
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # a key's value is in `unwritten` or else in the table
    keys = list(states)
    newer = await fetch_newer(keys, [seq_of(states[k]) for k in keys])
    for row in newer:
        states[row[key_column]] = decode(row[key_column], row["state"])
    return states, {row[key_column] for row in newer}


def _newest_unwritten(unwritten: Sequence[Mapping[str, bytes]], key: str) -> bytes | None:
    for values in reversed(unwritten):
        if (raw := values.get(key)) is not None:
            return raw
    return None


Process = Callable[[list[EventT]], Awaitable[None]]


@dataclass(frozen=True)
class Prepared:
    """A batch prepared while the previous one may still be committing: `finish()` commits it
    and does what must follow the commit; `drop()` forgets it when it will never be finished
    (its agent was cancelled first)."""

    finish: Callable[[], Awaitable[None]]
    drop: Callable[[], None]


#: The part of a batch that may run while the previous batch is being committed.
Prepare = Callable[[list[EventT]], Awaitable[Prepared]]


def register_batch_agent(
    app: faust.App, topic: faust.TopicT, name: str, process: Process, batch_max: int,
    batch_within: float, ready: asyncio.Event, prepare: Prepare | None = None,
) -> None:  # fmt: skip
    """Declare agent `name` on `app`: once `ready` (PostgreSQL connected), it hands `process`
    batches of up to `batch_max` events or what came within `batch_within` seconds, and
    fail-stops on any error so that the batch is never acked.

    With `app.batched_delivery` the batches come from the fetched records in time order
    (`lendstream.delivery`), acked here once `process` returns; without, Faust's stream delivers
    them message by message (`_register_stream_agent`). With batched delivery and `prepare`,
    batches are pipelined (`Pipeline`) and `process` is not called.

    Batched, PostgreSQL first, then the batches: until `ready`, fetched records wait in the
    agent's bounded queue (a full queue stops the fetches of its partitions); a rebalance or the
    end of a table recovery empties it, and the partitions are read again from their committed
    offsets.
    """
    if not getattr(app, "batched_delivery", False):
        _register_stream_agent(app, topic, name, process, batch_max, batch_within, ready)
        return
    queue = BatchQueue(app, capacity=max(4 * batch_max, 4096))
    batch_queues: dict[str, BatchQueue] = app.batch_queues  # type: ignore[attr-defined]
    queue.topics.update(topic.topics)
    queue.tie_order = {name: rank for rank, name in enumerate(topic.topics)}
    for topic_name in topic.topics:
        batch_queues[topic_name] = queue
    # Subscribed with the other topics at start-up (Faust subscribes an agent's topic when the
    # agent first iterates its stream; this one never does).
    app.topics.add(topic.clone(is_iterator=True))  # type: ignore[arg-type]

    pipeline = Pipeline(prepare, name) if prepare is not None else None

    @app.agent(topic, name=name)
    async def batch_agent(stream: StreamT) -> None:
        await ready.wait()
        if pipeline is not None:
            await pipeline.run(queue, batch_max, batch_within)
        while True:
            events = await queue.take(batch_max, batch_within)
            try:
                await process(events)
            except Exception:
                fail_stop(name)
            queue.ack(events)


class Pipeline:
    """Take, prepare and commit batches with one commit in flight while the next batch is
    prepared: the worker decodes and folds batch N+1 while PostgreSQL writes batch N, instead
    of waiting for it (`LENDSTREAM_PIPELINED_COMMITS`; docs/performance.md).

    Order is kept: each commit starts after the previous one has ended, and a batch is acked
    (its offsets become committable) only after its own commit. Any error in either part
    fail-stops, so no later batch is committed after a failed one. A rebalance or a shutdown
    waits for the acks (Faust's wait for unacked messages), so for the commit in flight too.

    A cancelled agent lets the commit in flight end (and ack) and drops the batch it had
    prepared (never acked: it is delivered again). The commit in flight is kept here, not in
    the agent, so that an agent Faust restarts waits for it before it commits anything.
    """

    def __init__(self, prepare: Prepare, name: str) -> None:
        self.prepare = prepare
        self.name = name
        self.committing: asyncio.Future[None] | None = None

    async def run(self, queue: BatchQueue, batch_max: int, batch_within: float) -> NoReturn:
        while True:
            events = await queue.take(batch_max, batch_within)
            prepared: Prepared | None = None
            try:
                prepared = await self.prepare(events)
                if self.committing is not None:
                    await asyncio.shield(self.committing)
            except asyncio.CancelledError:
                if prepared is not None:
                    prepared.drop()
                raise
            except Exception:
                fail_stop(self.name)
            self.committing = asyncio.ensure_future(
                _commit_and_ack(queue, prepared.finish, events, self.name)
            )


async def _commit_and_ack(
    queue: BatchQueue, finish: Callable[[], Awaitable[None]], events: list[EventT], name: str
) -> None:
    try:
        await finish()
    except Exception:
        fail_stop(name)
    queue.ack(events)


def _register_stream_agent(
    app: faust.App, topic: faust.TopicT, name: str, process: Process, batch_max: int,
    batch_within: float, ready: asyncio.Event,
) -> None:  # fmt: skip
    """The agent on Faust's own per-message delivery (`take_events`), batched delivery off.

    PostgreSQL first, then the stream: iterating the stream at once, to subscribe its topics
    before Faust's first rebalance, let the take buffer fill during recovery; after the recovery
    cleared the stream queues, partitions were seen never to be delivered again — a silent
    stall, worse than the late resubscription this order can cause, which the contiguity guard
    catches.
    """

    @app.agent(topic, name=name)
    async def batch_agent(stream: StreamT) -> None:
        await ready.wait()
        async for events in stream.take_events(batch_max, within=batch_within):  # type: ignore[attr-defined]
            try:
                await process(list(events))
            except Exception:
                fail_stop(name)
