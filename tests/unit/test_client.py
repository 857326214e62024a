"""The upstream producer helper, with the Kafka producer faked at its edge: validation before
any send, event ids fixed before retries, retriable errors retried, others raised."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, RequestTimedOutError
from aiokafka.structs import RecordMetadata

from lendstream.client import InvalidEvent, Publisher, PublishError, envelope

DATA = {"reason": "affordability"}


class FakeProducer:
    """Fails the first `failures[key]` sends of a key with `error`, acknowledges the rest."""

    def __init__(self, error: Exception | None = None, **failures: int) -> None:
        self.error = error
        self.failures = Counter(failures)
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[RecordMetadata]:
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, key, orjson.loads(value)))
        if self.failures[key.decode()] > 0:
            self.failures[key.decode()] -= 1
            future.set_exception(self.error or KafkaConnectionError())
        else:
            future.set_result(RecordMetadata(topic, 1, None, len(self.sent), -1, 0, -1))  # type: ignore[arg-type]
        return future


def publisher(producer: FakeProducer, attempts: int = 3) -> Publisher:
    return Publisher("kafka://unused:9092", attempts=attempts, backoff=0.001, producer=producer)  # type: ignore[arg-type]


def test_envelope_fills_in_event_id_and_occurred_at() -> None:
    value = envelope("LoanRejected", DATA, loan_id="L1", correlation_id="c")
    assert len(value["event_id"]) == 36 and value["schema_version"] == 1
    assert datetime.fromisoformat(value["occurred_at"]).tzinfo == UTC
    assert (value["loan_id"], value["correlation_id"], value["data"]) == ("L1", "c", DATA)
    assert "causation_id" not in value
    fixed = envelope(
        "LoanRejected", DATA, loan_id="L1", event_id="e1", occurred_at="2026-01-31T12:00:00Z"
    )
    assert (fixed["event_id"], fixed["occurred_at"]) == ("e1", "2026-01-31T12:00:00Z")


async def test_publish_sends_a_valid_event_keyed_by_its_loan() -> None:
    producer = FakeProducer()
    sent = await publisher(producer).publish("loan-events", "LoanRejected", DATA, loan_id="L1")
    ((topic, key, value),) = producer.sent
    assert (topic, key, value["loan_id"], value["event_id"]) == (
        "loan-events",
        b"L1",
        "L1",
        sent.event_id,
    )
    assert (sent.topic, sent.partition, sent.offset) == ("loan-events", 1, 1)


async def test_treasury_events_are_keyed_by_partner() -> None:
    producer = FakeProducer()
    data = {"partner_id": "P9", "currency": "EUR", "limit_cents": 100}
    await publisher(producer).publish("treasury-events", "CreditLineSet", data)
    assert producer.sent[0][1] == b"P9"


async def test_invalid_events_are_not_sent_at_all() -> None:
    producer = FakeProducer()
    good = envelope("LoanRejected", DATA, loan_id="L1")
    bad = envelope("LoanRejected", {"reason": ""}, loan_id="L2")
    with pytest.raises(InvalidEvent) as info:
        await publisher(producer).send("loan-events", [good, bad])
    assert [(e["index"], e["field"]) for e in info.value.errors] == [(1, "data.reason")]
    assert producer.sent == []
    with pytest.raises(ValueError, match="not a topic upstream systems write"):
        await publisher(producer).send("payout-events", [good])


async def test_retriable_failures_are_retried_with_the_same_event_id() -> None:
    producer = FakeProducer(L2=2)
    events = [envelope("LoanRejected", DATA, loan_id=f"L{n}") for n in (1, 2, 3)]
    sent = await publisher(producer, attempts=3).send("loan-events", events)
    assert [s.event_id for s in sent] == [e["event_id"] for e in events]
    attempts = Counter(value["event_id"] for _, _, value in producer.sent)
    assert attempts == Counter(
        {events[0]["event_id"]: 1, events[1]["event_id"]: 3, events[2]["event_id"]: 1}
    )


async def test_an_event_without_id_gets_one_before_the_first_attempt() -> None:
    producer = FakeProducer(L1=1)
    event = {
        k: v for k, v in envelope("LoanRejected", DATA, loan_id="L1").items() if k != "event_id"
    }
    (sent,) = await publisher(producer).send("loan-events", [event])
    assert {value["event_id"] for _, _, value in producer.sent} == {sent.event_id}


async def test_retries_end_after_the_attempts() -> None:
    producer = FakeProducer(RequestTimedOutError(), L1=5)
    with pytest.raises(PublishError) as info:
        await publisher(producer, attempts=3).publish(
            "loan-events", "LoanRejected", DATA, loan_id="L1"
        )
    assert len(producer.sent) == 3 and len(info.value.failed) == 1


async def test_a_permanent_error_is_not_retried() -> None:
    producer = FakeProducer(MessageSizeTooLargeError(), L1=1)
    with pytest.raises(PublishError):
        await publisher(producer, attempts=5).publish(
            "loan-events", "LoanRejected", DATA, loan_id="L1"
        )
    assert len(producer.sent) == 1


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Publisher("localhost:9092", attempts=0)
