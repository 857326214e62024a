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
        # Not below what this process has checked: with pipelined commits the batch before
        # may still be committing, and the stored position is then behind it.
        expected = max(stored[tp] + 1 if tp in stored else 0, self.expected.get(tp, 0))
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
    `patience` seconds is stalled — `busy_patience` seconds while the caller says the worker is
    busy with other partitions (`waits_its_turn`). The caller fail-stops: the restarted worker
    reads again from the committed offsets. It is only asked while the worker is ready and
    PostgreSQL healthy, so a slow or paused pipeline is not mistaken for a stall.
    """

    patience: float
    busy_patience: float | None = None  # None: `patience`, busy or not
    since: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)

    def stuck_for(self, tp: tuple[str, int], now: float) -> float:
        """Seconds since `tp`'s position last moved (0 if it is not being watched)."""
        watched = self.since.get(tp)
        return now - watched[1] if watched else 0.0

    def check(
        self,
        positions: Mapping[tuple[str, int], int],
        ends: Mapping[tuple[str, int], int],
        now: float,
        busy: bool = False,
    ) -> list[tuple[str, int]]:
        """The partitions stalled at `now` (seconds, monotonic)."""
        patience = self.busy_patience if busy and self.busy_patience is not None else self.patience
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
            if now - first >= patience:
                stalled.append(tp)
        return stalled


def waits_its_turn(committed_at: float | None, now: float, busy_within: float) -> bool:
    """Whether a partition whose position has not moved may only be waiting for its turn: the
    worker is busy (it committed a batch within `busy_within` seconds of `now`) with other
    partitions' records. `StallWatch.busy_patience` bounds how long this excuse may last.

    In a catch-up, a partition's position moves once per round over all partitions, and a round
    is long on a saturated worker:
    - the consumer fetches up to 1 MiB per partition and hands the fetches on in turn (measured
      at 1,500 events/s with 32 partitions: a first fetch of `loan-events[2]` waited 61 s in the
      client's buffer and the agent's queue);
    - so a partition's records may wait a minute before the client even hands them to the
      worker (measured in a 1.3-million-event catch-up: `payout-events[1]`, 61 s, with aiokafka's
      position — the next offset it hands on — at the processed position; in a diagnostic run
      of the same records, that partition at that offset had a fetch waiting in the client
      while the agents' queue held 10,309 events).
    Both made the watch fail-stop a healthy worker (four times in a 1.1-million-event catch-up).
    A worker that commits nothing excuses nothing: there, a partition with records behind its
    position is stalled after the patience.
    """
    return committed_at is not None and now - committed_at <= busy_within
