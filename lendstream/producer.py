"""Producing events to Kafka: the async producer used by `simulate`, `dev` and the tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from lendstream.security import kafka_client_options
from lendstream.settings import Settings
from lendstream.simulation import Produced


def kafka_producer(bootstrap: str | list[str], **options: object) -> AIOKafkaProducer:
    """An aiokafka producer with lendstream's defaults (acks=all, murmur2 key partitioning)."""
    config: dict[str, object] = {"acks": "all", "linger_ms": 5, "max_batch_size": 256 * 1024}
    config.update(options)
    return AIOKafkaProducer(bootstrap_servers=bootstrap, **config)


def settings_producer(settings: Settings, **options: object) -> AIOKafkaProducer:
    """`kafka_producer` for the configured cluster, with its TLS/SASL settings."""
    return kafka_producer(settings.bootstrap_servers, **kafka_client_options(settings), **options)


async def produce_all(
    producer: AIOKafkaProducer,
    messages: Iterable[Produced | tuple[str, bytes | None, bytes | None]],
    window: int = 5000,
) -> dict[tuple[str, int], int]:
    """Send every message, keeping at most `window` in flight.

    Returns the highest offset written per (topic, partition).

    Items are `Produced` (encoded as JSON) or raw `(topic, key, value)` tuples (for tests that
    need bytes that are not valid events).
    """
    pending: list[asyncio.Future[RecordMetadata]] = []
    ends: dict[tuple[str, int], int] = {}

    async def settle() -> None:
        for meta in await asyncio.gather(*pending):
            tp = (meta.topic, meta.partition)
            ends[tp] = max(ends.get(tp, -1), meta.offset)
        pending.clear()

    for item in messages:
        topic: str
        key: bytes | None
        value: bytes | None
        if isinstance(item, Produced):
            topic, key, value = item.topic, item.key.encode(), orjson.dumps(item.value)
        else:
            topic, key, value = item
        pending.append(await producer.send(topic, value=value, key=key))
        if len(pending) >= window:
            await settle()
    await settle()
    return ends
