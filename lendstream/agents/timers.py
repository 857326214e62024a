"""Durable timers of the loan queues: parked heads past their deadline, retries that are due.

The due times live in PostgreSQL (`loan_timers`, written with each loan's state in the batch's
transaction), so they survive crashes and rebalances. Every second, each worker looks up the
due loans of the partitions it owns and sends each a `FireTimers` command on `loan-control`,
addressed to the loan's partition; the loan processor then applies the timer in the loan's own
order (`sequencing.fire_timers`). A command is not sent again for the same loan and due time
within `RESEND_SECONDS`, and a command that finds nothing due changes nothing, so duplicates
(another worker after a rebalance, a restart) are harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust

from lendstream.projections.loans import due_timers_sql
from lendstream.projections.writer import UNAVAILABLE, CheckpointedWriter
from lendstream.topics import LOAN_EVENTS
from lendstream.topics.control import command

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 1.0
RESEND_SECONDS = 10.0
MAX_PER_ROUND = 5000

Send = Callable[[str, int, bytes], Awaitable[None]]


@dataclass
class TimerSweep:
    """One worker's sweep over the timer index (see the module docstring)."""

    writer: CheckpointedWriter[Any]
    schema: str
    send: Send
    sent: dict[tuple[str, datetime], float] = field(default_factory=dict)

    async def run_once(self, partitions: Iterable[int]) -> int:
        """Send `FireTimers` to every due loan of `partitions`; returns how many were sent."""
        owned = sorted(set(partitions))
        if not owned or self.writer.pool is None:
            return 0
        now = datetime.now(UTC)
        try:
            rows = await self.writer.pool.fetch(
                due_timers_sql(self.schema), owned, now, MAX_PER_ROUND
            )
        except UNAVAILABLE as exc:
            log.debug("timer sweep skipped, PostgreSQL unavailable: %s", exc)
            return 0
        clock = time.monotonic()
        self.sent = {k: t for k, t in self.sent.items() if clock - t < RESEND_SECONDS}
        count = 0
        for row in rows:
            loan_id, timer = row["loan_id"], (row["loan_id"], row["due_at"])
            if timer in self.sent:
                continue
            await self.send(loan_id, row["partition"], command("FireTimers", loan_id, {}, now))
            self.sent[timer] = clock
            count += 1
        return count


def register(app: faust.App, sweep: TimerSweep, ready: object) -> None:
    """Run `sweep` every `INTERVAL_SECONDS` on `app`, once the worker is ready and recovered."""

    @app.timer(interval=INTERVAL_SECONDS, name="loan-timers")
    async def fire_due_timers() -> None:
        if not ready.is_set() or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == LOAN_EVENTS.name}
        sent = await sweep.run_once(owned)
        if sent:
            log.info("sent FireTimers to %d loans", sent)
