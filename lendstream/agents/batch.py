"""What every batching agent needs: turning Faust events into `Message`s, and table access for
a given message outside Faust's per-message iteration.

Faust routes a table read or write to the partition of the *current event*; in a batch that
spans partitions we set the current event explicitly to a message of the key being touched, so
each key's value (and its changelog record) lands in its own partition.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Iterator, Mapping
from typing import NoReturn

from faust.streams import _current_event
from faust.types import EventT

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


def to_message(event: EventT, specs: Mapping[str, TopicSpec]) -> Message:
    """Decode one Faust event with its topic's codec (never raises)."""
    msg = event.message
    raw_key = msg.key
    key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else str(raw_key or "")
    value = msg.value if isinstance(msg.value, bytes | None) else bytes(msg.value)
    return Message(
        position=Position(msg.topic, msg.partition, msg.offset),
        key=key,
        timestamp=msg.timestamp,
        decoded=specs[msg.topic].decode(raw_key, value),
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
