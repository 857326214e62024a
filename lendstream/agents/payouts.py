"""The payout saga's I/O shell: carries out the commands `sagas.payout` returns.

- `Emit` and `ToTreasury` become records on `payout-events` (the loan's partition) and
  `treasury-commands` (key `partner_id`); customer notifications go to `customer-notifications`
  (key `customer_id`). The loan processor collects them in an `Outbox`, commits them with the
  batch (an `outbox` row, `projections.outbox`) and sends them only *after* the commit. A batch
  that runs again after a crash may decide differently (a timer compared with a later clock, a
  different interleaving of the partitions), so nothing an uncommitted run decided may reach
  Kafka: before, a worker killed between sending and committing left a `PayoutFailed` behind
  that the next run, which retried the gateway instead, contradicted with a `LoanPaidOut`.
  Records a crash leaves unsent after the commit are sent by the next batch of a new consumer
  generation (same event ids: duplicates downstream, never a second fact).
- `CallGateway` is made by `GatewayCalls` after the batch is committed, in the background (at
  most `concurrency` at once); each answer goes back to the loan's processor as a
  `GatewayAnswered` command on `loan-control`, in the loan's own order. A call lost to a crash
  is made again when the saga's timer fires (same `Idempotency-Key`; the gateway answers 409 if
  the first one got through).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from lendstream.agents.batch import Send
from lendstream.gateway import GatewayClient
from lendstream.projections.outbox import Record, Staged
from lendstream.projections.writer import CheckpointedWriter
from lendstream.sagas.fanout import Notification
from lendstream.sagas.payout import CallGateway, Command, Emit, ToTreasury
from lendstream.sagas.treasury import encode_command
from lendstream.topics import CUSTOMER_NOTIFICATIONS_TOPIC, PAYOUT_EVENTS
from lendstream.topics.codec import encode_event
from lendstream.topics.control import command as control_command
from lendstream.topics.treasury import COMMANDS_TOPIC as TREASURY_COMMANDS

log = logging.getLogger(__name__)


@dataclass
class Outbox:
    """The records a batch decides to send: committed with the batch (`stage`), sent after the
    commit (`send_committed`); what earlier workers committed and did not send goes first, once
    per consumer generation (`send_leftovers`)."""

    send: Send
    generation: Callable[[], int] = lambda: 0  # the consumer generation now
    records: list[Record] = field(default_factory=list)
    _leftovers_sent_in: int | None = None

    def add(self, topic: str, key: str, value: bytes, partition: int | None = None) -> None:
        self.records.append((topic, key.encode(), value, partition))

    def add_commands(self, commands: list[tuple[int, Command]]) -> list[tuple[int, CallGateway]]:
        """Queue the records of `commands` (each with its loan's partition); returns the
        gateway calls, to be made once the batch is committed."""
        calls = []
        for partition, cmd in commands:
            if isinstance(cmd, Emit):
                event = cmd.event
                self.add(PAYOUT_EVENTS.name, event.key, encode_event(event), partition)
            elif isinstance(cmd, ToTreasury):
                self.add(TREASURY_COMMANDS, cmd.command.partner_id,
                         encode_command(cmd.command, partition))  # fmt: skip
            else:
                calls.append((partition, cmd))
        return calls

    def add_notification(self, note: Notification) -> None:
        value = orjson.dumps(note)
        self.add(CUSTOMER_NOTIFICATIONS_TOPIC, note.customer_id, value)

    def stage(self) -> Staged | None:
        """The batch's records, to commit with it (None: there are none); empties the outbox."""
        records, self.records = self.records, []
        return Staged(records) if records else None

    async def send_committed(self, staged: Staged | None, writer: CheckpointedWriter[Any]) -> None:
        """Send `staged`, whose batch is committed, wait until Kafka has acknowledged every
        record, then delete its `outbox` row. Raises if a record is not acknowledged (the row
        stays, and the next generation sends it)."""
        if staged is not None:
            await self._send_all(staged.records)
            await writer.sent([staged])

    async def send_leftovers(self, writer: CheckpointedWriter[Any]) -> None:
        """Once per consumer generation, before its first batch: send the records committed by
        any worker of `writer`'s projection and not known to be sent (a crash between a commit
        and its send; a worker that lost its partitions sends them at the same time: the
        duplicates are harmless), oldest first."""
        generation = self.generation()
        if generation == self._leftovers_sent_in:
            return
        left = await writer.leftovers()
        for staged in left:
            await self._send_all(staged.records)
        if left:
            await writer.sent(left)
            log.warning("sent the records of %d committed batches a crash had left unsent "
                        "(%s)", len(left), writer.projection)  # fmt: skip
        self._leftovers_sent_in = generation

    async def _send_all(self, records: Sequence[Record]) -> None:
        pending = [await self.send(topic, key, value, partition)
                   for topic, key, value, partition in records]  # fmt: skip
        if pending:
            await asyncio.gather(*pending)


AnswerSend = Callable[[str, int, bytes], Awaitable[None]]


class GatewayCalls:
    """Gateway calls in flight; answers go back as `GatewayAnswered` commands."""

    def __init__(self, client: GatewayClient, answer: AnswerSend, concurrency: int = 64) -> None:
        self.client = client
        self.answer = answer
        self.limit = asyncio.Semaphore(concurrency)
        self.in_flight: dict[tuple[str, int], asyncio.Task[None]] = {}

    def start(self, calls: list[tuple[int, CallGateway]]) -> None:
        for partition, call in calls:
            key = (call.payout_id, call.attempt)
            if key not in self.in_flight:
                task = asyncio.ensure_future(self._call(partition, call))
                self.in_flight[key] = task
                task.add_done_callback(lambda _, key=key: self.in_flight.pop(key, None))  # type: ignore[misc]

    async def _call(self, partition: int, call: CallGateway) -> None:
        try:
            async with self.limit:
                result = await self.client.pay(call)
            data = {"attempt": call.attempt, "kind": result.kind, "reason": result.reason}
            value = control_command("GatewayAnswered", call.loan_id, data, datetime.now(UTC))
            await self.answer(call.loan_id, partition, value)
        except Exception:  # the saga's timer makes the call again
            log.exception("gateway call %s attempt %d: answer not delivered", call.payout_id,
                          call.attempt)  # fmt: skip
