"""The treasury processor: partner credit lines (contract §5.1), keyed by `partner_id`.

Consumes `treasury-events` (upstream `CreditLineSet`) and `treasury-commands` (the payout
saga's `Reserve` / `Release` / `Disburse` / `ReturnPrincipal`), co-partitioned. Per batch: drop
what is at or below the stored positions (so every message takes effect once); load each line
from the `credit_lines` table, or PostgreSQL's copy where that one is newer; fold the messages
with the pure `sagas.treasury.react`; commit `partner_credit`, the line states, the answers
(`FundsReserved`, …; an `outbox` row) and the positions in one transaction; then send the
answers to `payout-events`, each on the partition its loan's saga named, wait for Kafka to
acknowledge them, and write the table. Nothing is sent before the commit: a batch run again
after a crash may interleave its two topics differently and answer differently.

A message that does not decode, and a `CreditLineSet` that changes the currency while funds are
in use, become dead letters (status `dead`) and change nothing. The line is not blocked: the
treasury has no per-partner order to keep beyond Kafka's.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from functools import partial

import faust
from faust.types import EventT

from lendstream.agents.batch import (
    TableWriter,
    by_partition,
    key_of,
    load_states,
    partition_ends,
    position_of,
    register_batch_agent,
    to_message,
)
from lendstream.agents.payouts import Outbox
from lendstream.domain.errors import LifecycleViolation
from lendstream.domain.sequencing import Message, Pending
from lendstream.projections.loans import dead_letter_row
from lendstream.projections.treasury import LineRow, TreasuryRows, newer_lines_sql
from lendstream.projections.writer import CheckpointedWriter, Item
from lendstream.sagas import treasury
from lendstream.sagas.treasury import CreditLine, TreasuryInput, decode_command
from lendstream.tables import treasury as lines_table
from lendstream.topics import PAYOUT_EVENTS, TREASURY_EVENTS
from lendstream.topics.codec import Invalid, encode_event
from lendstream.topics.envelope import Event
from lendstream.topics.treasury import COMMANDS_TOPIC

log = logging.getLogger(__name__)
SPECS = {TREASURY_EVENTS.name: TREASURY_EVENTS}


class TreasuryProcessor:
    def __init__(
        self, table: faust.Table, writer: CheckpointedWriter[TreasuryRows], outbox: Outbox,
        schema: str,
    ) -> None:  # fmt: skip
        self.table = table
        self.writer = writer
        self.outbox = outbox
        self.table_writer = TableWriter(table, outbox.send)
        self.newer_sql = newer_lines_sql(schema)

    async def process(self, events: list[EventT]) -> None:
        await self.outbox.send_leftovers(self.writer)
        stored = await self.writer.stored()
        fresh = [
            e for e in events
            if e.message.offset > stored.get((e.message.topic, e.message.partition), -1)
        ]  # fmt: skip
        if not fresh:
            return
        now = datetime.now(UTC)
        last_event = {key_of(e): e for e in fresh}
        lines, seqs = await self.load(last_event)
        rows = TreasuryRows()
        changed: set[str] = set()
        for event in fresh:
            key = key_of(event)
            decoded: TreasuryInput | None = None
            try:
                decoded, reply_partition = decode(event)
                lines[key], answers = treasury.react(lines[key], decoded, now)
            except (ValueError, LifecycleViolation) as exc:
                rows.dead_letters.append(_dead_letter(event, decoded, exc, now))
                continue
            changed.add(key)
            for answer in answers:
                self.outbox.add(PAYOUT_EVENTS.name, answer.key, encode_event(answer),
                                reply_partition)  # fmt: skip
        encoded = {key: lines_table.encode(lines[key], seqs[key] + 1) for key in changed}
        rows.lines.extend(LineRow(lines[k], seqs[k] + 1, encoded[k]) for k in sorted(changed))
        staged = self.outbox.stage()
        timestamps = [e.message.timestamp for e in fresh]
        await self.writer.commit([Item(position_of(fresh[0]), rows)], partition_ends(fresh),
                                 timestamps, staged)  # fmt: skip
        await self.outbox.send_committed(staged, self.writer)
        await self.table_writer.write(by_partition(encoded, last_event))

    async def load(
        self, events_by_key: dict[str, EventT]
    ) -> tuple[dict[str, CreditLine], dict[str, int]]:
        """Each partner's line and seq: the table's, or PostgreSQL's where that one is newer."""
        loaded, _ = await load_states(
            self.table, events_by_key, lambda key, raw: lines_table.decode(raw, key),
            lambda state: state[1],
            partial(self.writer.fetch, self.newer_sql), "partner_id",
        )  # fmt: skip
        return {k: v[0] for k, v in loaded.items()}, {k: v[1] for k, v in loaded.items()}


def decode(event: EventT) -> tuple[TreasuryInput, int | None]:
    """The line input a record carries, and where its answer goes; raises `ValueError`."""
    msg = event.message
    if msg.topic == COMMANDS_TOPIC:
        return decode_command(msg.value or b"")
    decoded = to_message(event, SPECS).decoded
    if isinstance(decoded, Invalid):
        raise ValueError(f"{decoded.error_class}: {decoded.reason}")
    return decoded, None  # type: ignore[return-value]


def _dead_letter(
    event: EventT, decoded: TreasuryInput | None, exc: Exception, now: datetime
) -> tuple[object, ...]:
    """The `dead_letters` row of a record that could not be applied (`decoded`: what it
    decoded to, if it did)."""
    msg = event.message
    pos = position_of(event)
    error_class = type(exc).__name__
    applied = decoded if isinstance(decoded, Event) else None  # a command is not an event
    pending = Pending(pos, applied, "dead", error_class, str(exc),
                      datetime.fromtimestamp(msg.timestamp, UTC))  # fmt: skip
    message = Message(pos, key_of(event), msg.timestamp, applied or Invalid(error_class, str(exc)),
                      msg.value)  # fmt: skip
    log.warning("treasury dead letter %s: %s", pending.id, exc)
    return dead_letter_row(pending, "dead", message, now)


def register(app: faust.App, topic: faust.TopicT, processor: TreasuryProcessor, batch_max: int,
             batch_within: float, ready: asyncio.Event) -> None:  # fmt: skip
    """Declare the `treasury-processor` agent on `app`."""
    register_batch_agent(
        app, topic, "treasury-processor", processor.process, batch_max, batch_within, ready
    )
