"""The payout saga's I/O shell: carries out the commands `sagas.payout` returns.

- `Emit` and `ToTreasury` become records on `payout-events` (the loan's partition) and
  `treasury-commands` (key `partner_id`); customer notifications go to `customer-notifications`
  (key `customer_id`). The loan processor collects them in an `Outbox` and flushes it — every
  record acknowledged by Kafka — *before* it commits the batch: a crash in between makes the
  batch run again and send the same records (same event ids), which are duplicates downstream.
- `CallGateway` is made by `GatewayCalls` after the batch is committed, in the background (at
  most `concurrency` at once); each answer goes back to the loan's processor as a
  `GatewayAnswered` command on `loan-control`, in the loan's own order. A call lost to a crash
  is made again when the saga's timer fires (same `Idempotency-Key`; the gateway answers 409 if
  the first one got through).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from lendstream.agents.batch import Send
from lendstream.gateway import GatewayClient
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
    """Records to send before a batch is committed."""

    send: Send
    records: list[tuple[str, bytes, bytes, int | None]] = field(default_factory=list)

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

    async def flush(self) -> None:
        """Send every record and wait until Kafka has acknowledged all of them."""
        records, self.records = self.records, []
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
