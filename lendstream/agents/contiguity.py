"""Admit only messages that continue, without a hole, from the durably processed position.

Our PostgreSQL positions (written in the same transaction as the rows) say exactly which
messages of each partition have been processed. A batch may contain a message beyond
`position + 1` only if the messages in between do not exist (deleted by retention, or
transaction markers of an upstream producer). Otherwise the consumer skipped them and they
would be lost: the guard raises `SkippedMessages` before anything of the batch is written or
acked, and the agent stops the worker (fail-stop) so that nothing is silently lost.

faust-streaming 0.15.3 did skip messages after a table restore (see `lendstream.recovery` for
the race and its fix); this guard is what found it and what keeps it from ever costing data.
Messages at or below the position are admitted: they are redeliveries, which the table dedupes
and the projection skips. `StallWatch` covers the one hole the guard cannot see: records that are
never delivered because nothing after them arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from faust.types import EventT

log = logging.getLogger(__name__)

Positions = Callable[[], Awaitable[Mapping[tuple[str, int], int]]]
FirstOffset = Callable[[str, int, int], Awaitable[int | None]]


class SkippedMessages(Exception):
    """The consumer delivered a message past records that exist but were never processed."""


@dataclass
class ContiguityGuard:
    """Checks that each partition's messages continue from the stored position."""

    stored_positions: Positions  # last processed offset per (topic, partition), durable
    first_offset_from: FirstOffset  # first existing offset at or after an offset, or None
    expected: dict[tuple[str, int], int] = field(default_factory=dict)
    holes_skipped: int = 0  # real holes (no records there)

    async def check(self, events: list[EventT]) -> None:
        """Raise `SkippedMessages` if `events` would skip an existing message."""
        for event in events:
            msg = event.message
            tp = (msg.topic, msg.partition)
            await self._continues(tp, msg.offset)
            self.expected[tp] = max(self.expected.get(tp, 0), msg.offset + 1)

    async def _continues(self, tp: tuple[str, int], offset: int) -> None:
        expected = self.expected.get(tp)
        if expected is not None and offset <= expected:
            return
        stored = await self.stored_positions()
        expected = stored[tp] + 1 if tp in stored else self.expected.get(tp, 0)
        self.expected[tp] = expected
        if offset <= expected:
            return
        first = await self.first_offset_from(tp[0], tp[1], expected)
        if first is not None and first >= offset:
            log.warning("no records at %s[%d] offsets %d..%d; skipping", *tp, expected, offset - 1)
            self.holes_skipped += 1
            return
        raise SkippedMessages(
            f"consumer skipped {tp[0]}[{tp[1]}] offsets {expected}..{offset - 1} "
            f"(first existing: {first})"
        )


@dataclass
class StallWatch:
    """Notices records that exist but are never delivered — a hole the guard cannot see,
    because nothing after it arrives (seen once in the crash test: after a restart, six
    partitions of a topic were never delivered again, with no error).

    `check` is given, per source partition, the durably processed position and the partition's
    end; a partition with records after its position whose position has not moved for
    `patience` seconds is stalled. The caller fail-stops: the restarted worker reads again from
    the committed offsets. It is only asked while the worker is ready and PostgreSQL healthy,
    so a slow or paused pipeline is not mistaken for a stall.
    """

    patience: float
    since: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)

    def excuse(self, tp: tuple[str, int]) -> None:
        """Start `tp`'s wait again: its records are waiting their turn (`waits_its_turn`)."""
        self.since.pop(tp, None)

    def check(
        self,
        positions: Mapping[tuple[str, int], int],
        ends: Mapping[tuple[str, int], int],
        now: float,
    ) -> list[tuple[str, int]]:
        """The partitions stalled at `now` (seconds, monotonic)."""
        stalled = []
        for tp, end in ends.items():
            position = positions.get(tp, -1)
            if position + 1 >= end:
                self.since.pop(tp, None)
                continue
            seen, first = self.since.get(tp, (position, now))
            if seen != position:
                seen, first = position, now
            self.since[tp] = (seen, first)
            if now - first >= self.patience:
                stalled.append(tp)
        return stalled


def waits_its_turn(
    next_record_ms: int, newest_processed: float, committed_at: float | None, now: float,
    busy_within: float,
) -> bool:  # fmt: skip
    """Whether a partition whose position has not moved is only waiting in time order: the
    worker is busy (it committed a batch within `busy_within` seconds of `now`) with records
    older than the partition's next one (`next_record_ms`, its Kafka timestamp; -1 if absent).

    The agents take records in timestamp order across partitions (`delivery.in_time_order`),
    so in a long catch-up a sparse partition whose first fetch reached far ahead in time waits
    until the dense ones get there: seen for 60 to 125 s in a 1.1-million-event backlog, where
    the watch fail-stopped the worker four times for it. A partition whose next record is older
    than what the worker is committing, or a worker that commits nothing, is not excused.
    """
    if next_record_ms < 0 or committed_at is None or now - committed_at > busy_within:
        return False
    return next_record_ms / 1000 > newest_processed
