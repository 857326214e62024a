"""The upstream producer helper against the real broker: what it sends is what lendstream's
codec reads, keyed and partitioned like the Java client (murmur2), with event ids set."""

from __future__ import annotations

import orjson
import pytest

from lendstream.admin import ensure_topics
from lendstream.client import InvalidEvent, Publisher, envelope
from lendstream.embedded import Broker
from lendstream.settings import Settings
from lendstream.topics import BY_NAME, Event
from tests.harness import partition_of, read_topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

APPLIED = {"customer_id": "C1", "partner_id": "P1", "amount_cents": 120_000, "currency": "EUR",
           "term_months": 6}  # fmt: skip


async def test_published_events_reach_the_topics_as_the_codec_reads_them(broker: Broker) -> None:
    await ensure_topics(Settings(kafka=broker.url, partitions=8, _env_file=None))  # type: ignore[call-arg]
    async with Publisher(broker.url) as publisher:
        sent = [
            await publisher.publish("loan-events", "LoanApplied", APPLIED, loan_id=f"L{n}")
            for n in range(20)
        ]
        sent += await publisher.send("payment-events", [
            envelope("RepaymentReceived", {"payment_id": f"p{n}", "amount_cents": 100,
                                           "currency": "EUR"}, loan_id=f"L{n}")
            for n in range(5)
        ])  # fmt: skip
        sent.append(
            await publisher.publish(
                "treasury-events", "CreditLineSet",
                {"partner_id": "P1", "currency": "EUR", "limit_cents": 10**9},
            )
        )  # fmt: skip
        with pytest.raises(InvalidEvent):
            await publisher.publish("loan-events", "LoanApplied", {**APPLIED, "currency": "XYZ"},
                                    loan_id="L-bad")  # fmt: skip

    records = await read_topics([broker.bootstrap], BY_NAME, 8)
    assert len(records) == len(sent) == 26
    by_id = {s.event_id: s for s in sent}
    for record in records:
        event = BY_NAME[record.topic].decode(record.key, record.value)
        assert isinstance(event, Event), event
        ack = by_id[event.event_id]
        assert (ack.topic, ack.partition, ack.offset) == (
            record.topic,
            record.partition,
            record.offset,
        )
        assert record.partition == partition_of(record.key, 8)
        assert orjson.loads(record.value)["event_id"] == event.event_id
    loan_partitions = {r.key: r.partition for r in records if r.topic == "loan-events"}
    for record in records:  # co-partitioned: a loan's payments sit in its loan's partition
        if record.topic == "payment-events":
            assert record.partition == loan_partitions[record.key]
