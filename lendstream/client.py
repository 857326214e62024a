"""A small producer for upstream services that write lendstream's topics from Python.

    async with Publisher("kafka-1:9092,kafka-2:9092") as publisher:
        sent = await publisher.publish(
            "loan-events", "LoanApplied", loan_id="L-1",
            data={"customer_id": "C-1", "partner_id": "P-1", "amount_cents": 500_000,
                  "currency": "EUR", "term_months": 12},
        )

What it does for you:
- **Validates** every event with lendstream's own codec before sending (`InvalidEvent` names each
  field and reason; nothing is sent), so a typo never becomes a dead letter.
- **Keys** it as lendstream requires: `loan_id` on loan-keyed topics, `data.partner_id` on
  `treasury-events`; partitions with murmur2 (aiokafka's default, the Java client's), so the
  loan-keyed topics stay co-partitioned.
- **Sets `event_id`** (a UUID4) and `occurred_at` (now, UTC) when you do not give them. The id is
  fixed before the first attempt, so a retried send is a duplicate that lendstream applies once.
- **Retries** sends that fail with a retriable Kafka error, with exponential backoff, up to
  `attempts` times; then `PublishError` says which events did not make it.

Delivery is at least once (acks=all; a retry after a lost acknowledgement writes a second copy,
which lendstream ignores by `event_id`). Idempotent producers need `InitProducerId`, which the
embedded dev broker lacks, so the producer does not ask for it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from aiokafka.structs import RecordMetadata

from lendstream.ingest import INGEST_TOPICS, Item, Rejected, produce, validate_items
from lendstream.producer import kafka_producer

log = logging.getLogger(__name__)


class InvalidEvent(ValueError):
    """An event lendstream would reject; `errors` lists `{index, event_id, field, reason}`."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


class PublishError(Exception):
    """Some events were not acknowledged after every attempt; `failed` maps event_id to error."""

    def __init__(self, failed: dict[str, BaseException]) -> None:
        first = next(iter(failed.values()))
        super().__init__(f"{len(failed)} events not sent after retries (e.g. {first!r})")
        self.failed = failed


@dataclass(frozen=True, slots=True)
class Sent:
    event_id: str
    topic: str
    partition: int
    offset: int


def envelope(
    kind: str,
    data: dict[str, Any],
    *,
    loan_id: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    schema_version: int = 1,
) -> dict[str, Any]:
    """An event envelope (contract §2), with a fresh `event_id` and `occurred_at` = now."""
    when = occurred_at or datetime.now(UTC)
    value: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid4()),
        "type": kind,
        "schema_version": schema_version,
        "occurred_at": when if isinstance(when, str) else when.isoformat(),
    }
    optional = {"loan_id": loan_id, "correlation_id": correlation_id, "causation_id": causation_id}
    value.update({k: v for k, v in optional.items() if v is not None})
    value["data"] = data
    return value


def retriable(exc: BaseException) -> bool:
    if isinstance(exc, KafkaTimeoutError | KafkaConnectionError | asyncio.TimeoutError):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


class Publisher:
    """Validated, keyed, retried sends to lendstream's upstream topics."""

    def __init__(
        self,
        bootstrap: str | list[str],
        *,
        attempts: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        servers = bootstrap.split(",") if isinstance(bootstrap, str) else bootstrap
        servers = [s.strip().removeprefix("kafka://") for s in servers if s.strip()]
        self.producer = producer or kafka_producer(servers)
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff

    async def __aenter__(self) -> Publisher:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def publish(self, topic: str, kind: str, data: dict[str, Any], **fields: Any) -> Sent:
        """Build an envelope (see `envelope`), validate it, send it; one `Sent`."""
        (sent,) = await self.send(topic, [envelope(kind, data, **fields)])
        return sent

    async def send(self, topic: str, events: Sequence[dict[str, Any]]) -> list[Sent]:
        """Send complete envelopes (an `event_id` is added where missing), in order.

        All or nothing for validation (`InvalidEvent`, nothing sent); sends are retried per
        event, and `PublishError` names the events that failed every attempt.
        """
        spec = INGEST_TOPICS.get(topic)
        if spec is None:
            raise ValueError(
                f"{topic!r} is not a topic upstream systems write: {sorted(INGEST_TOPICS)}"
            )
        events = [{**e, "event_id": e.get("event_id") or str(uuid.uuid4())} for e in events]
        try:
            items = validate_items(spec, events)
        except Rejected as rejected:
            raise InvalidEvent(rejected.body["error"], rejected.body["errors"]) from None
        acked = await self._send_with_retries(topic, items)
        return [
            Sent(i.event_id, topic, acked[i.event_id].partition, acked[i.event_id].offset)
            for i in items
        ]

    async def _send_with_retries(
        self, topic: str, items: Iterable[Item]
    ) -> dict[str, RecordMetadata]:
        pending = {item.event_id: item for item in items}  # a repeated event_id goes once
        acked: dict[str, RecordMetadata] = {}
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            errors = {}
            for event_id, outcome in (
                await produce(self._send, topic, list(pending.values()))
            ).items():
                if isinstance(outcome, RecordMetadata):
                    acked[event_id] = outcome
                    del pending[event_id]
                else:
                    errors[event_id] = outcome
            if not errors:
                return acked
            if attempt == self.attempts or not all(retriable(e) for e in errors.values()):
                raise PublishError(errors)
            log.warning(
                "%d sends failed (attempt %d); retrying in %.1fs", len(errors), attempt, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, topic: str, key: bytes, value: bytes) -> Awaitable[Awaitable[RecordMetadata]]:
        return self.producer.send(topic, value, key=key)
