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
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, NoReturn, TypeVar

import faust
from faust.streams import _current_event
from faust.types import EventT, StreamT

from lendstream.delivery import BatchQueue
from lendstream.domain.sequencing import Message, Position
from lendstream.topics.codec import TopicSpec


@contextlib.contextmanager
def as_current(event: EventT) -> Iterator[None]:
    """Make `event` Faust's current event for table access inside the block."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def key_of(event: EventT) -> str:
    """The record's key as text (invalid UTF-8 replaced)."""
    raw_key = event.message.key
    return raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else str(raw_key or "")


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


def _headers(headers: object) -> tuple[tuple[str, bytes], ...]:
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(k), v if isinstance(v, bytes) else str(v).encode()) for k, v in items)  # type: ignore[union-attr]


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


S = TypeVar("S")
FetchNewer = Callable[[list[str], list[int]], Awaitable[list[Any]]]


async def load_states(
    table: faust.Table, events_by_key: Mapping[str, EventT], decode: Callable[[str, bytes | None], S],
    seq_of: Callable[[S], int], fetch_newer: FetchNewer, key_column: str,
) -> tuple[dict[str, S], int]:  # fmt: skip
    """Each key's state: the table's (read as the key's own event, so from its partition), or
    PostgreSQL's copy where that one has a higher `seq` (the table can be behind after a
    SIGKILL: its changelog loses what was still in the producer's buffer). `fetch_newer(keys,
    seqs)` returns rows with `key_column` and `state`. Also returns how many were taken from
    PostgreSQL."""
    states = {}
    for key, event in events_by_key.items():
        with as_current(event):
            states[key] = decode(key, table.get(key.encode()))
    keys = list(states)
    newer = await fetch_newer(keys, [seq_of(states[k]) for k in keys])
    for row in newer:
        states[row[key_column]] = decode(row[key_column], row["state"])
    return states, len(newer)


Process = Callable[[list[EventT]], Awaitable[None]]


def register_batch_agent(
    app: faust.App, topic: faust.TopicT, name: str, process: Process, batch_max: int,
    ready: asyncio.Event,
) -> None:  # fmt: skip
    """Declare agent `name` on `app`: once `ready` (PostgreSQL connected), it hands `process`
    what has been fetched of `topic`'s partitions — whole fetched batches, up to `batch_max`
    events (`lendstream.delivery`) — acks them once `process` returns, and fail-stops on any
    error so that the batch is never acked.

    PostgreSQL first, then the batches: until `ready`, fetched batches wait in the agent's
    bounded queue (the fetcher waits when it is full); a rebalance or the end of a table
    recovery empties it, and the partitions are read again from their committed offsets.
    """
    queue = BatchQueue(app, capacity=max(4 * batch_max, 4096))
    batch_queues: dict[str, BatchQueue] = app.batch_queues  # type: ignore[attr-defined]
    for topic_name in topic.topics:
        batch_queues[topic_name] = queue
    # Subscribed with the other topics at start-up (Faust subscribes an agent's topic when the
    # agent first iterates its stream; this one never does).
    app.topics.add(topic.clone(is_iterator=True))

    @app.agent(topic, name=name)
    async def batch_agent(stream: StreamT) -> None:
        await ready.wait()
        while True:
            events = await queue.take(batch_max)
            try:
                await process(events)
            except Exception:
                fail_stop(name)
            queue.ack(events)
