"""Kafka helpers that stay correct on Apache Kafka and on the embedded Tansu broker.

End offsets: `ListOffsets(LATEST)` (aiokafka `end_offsets`) is wrong on Tansu after a batched
produce (it answers the base offset of the last batch + 1). The high watermark in a Fetch
response is right on both brokers, and on Apache Kafka it is by definition what ListOffsets
answers for `read_uncommitted`. So every end offset lendstream relies on — table recovery, lag —
comes from `high_watermarks`, which fetches from each partition and reads the watermark off the
response. There is no broker-specific code path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lendstream.settings import Settings

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest
from aiokafka.structs import TopicPartition

PROBE_TIMEOUT_SECONDS = 15.0
LEAVE_TIMEOUT_SECONDS = 2.0
log = logging.getLogger(__name__)


def with_broker(settings: Settings) -> Settings:
    """`settings`, naming the running `lendstream dev` broker when `LENDSTREAM_KAFKA` is unset.

    Raises `SettingsError` when there is neither.
    """
    from lendstream.devstack import dev_endpoints
    from lendstream.settings import SettingsError

    if settings.kafka:
        return settings
    endpoints = dev_endpoints(settings.data_dir)
    if not endpoints or not endpoints.get("kafka"):
        raise SettingsError(
            "LENDSTREAM_KAFKA is not set and no `lendstream dev` broker is running here"
        )
    return settings.model_copy(update={"kafka": endpoints["kafka"]})


def group_less_consumer(
    bootstrap: str | list[str],
    client_options: Mapping[str, Any] | None = None,
    **config: Any,
) -> AIOKafkaConsumer:
    """A consumer outside any group, reading from the start of what it is assigned: it never
    joins a group or commits. `client_options`: TLS/SASL arguments
    (`lendstream.security.kafka_client_options`); `config`: further aiokafka settings."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **config,
        **(client_options or {}),
    )


def _probe_consumer(
    bootstrap: str | list[str],
    max_partition_fetch_bytes: int,
    client_options: Mapping[str, Any] | None,
) -> AIOKafkaConsumer:
    """A group-less consumer for short look-ups: small fetches, short waits."""
    return group_less_consumer(
        bootstrap,
        client_options,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=max_partition_fetch_bytes,
        fetch_max_bytes=64 * 1024,
    )


async def high_watermarks(
    bootstrap: str | list[str],
    partitions: Iterable[TopicPartition],
    start: Mapping[TopicPartition, int] | None = None,
    timeout: float = PROBE_TIMEOUT_SECONDS,
    client_options: Mapping[str, Any] | None = None,
) -> dict[TopicPartition, int]:
    """The true end offset (next offset to be written) of each partition.

    `start` optionally gives a known lower bound per partition (e.g. a ListOffsets answer) to
    fetch from, so that the probe reads at most what was appended since. Raises
    `TimeoutError` if a partition's leader does not answer within `timeout`.
    """
    tps = list(dict.fromkeys(partitions))
    if not tps:
        return {}
    consumer = _probe_consumer(bootstrap, 1024, client_options)
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp in tps:
            lower = (start or {}).get(tp)
            if lower is not None and lower > 0:
                consumer.seek(tp, lower - 1)
        return await _collect(consumer, tps, timeout)
    finally:
        await consumer.stop()


async def _collect(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout: float
) -> dict[TopicPartition, int]:
    deadline = time.monotonic() + timeout
    result: dict[TopicPartition, int] = {}
    while True:
        for tp in tps:
            if tp not in result and (hw := consumer.highwater(tp)) is not None:
                result[tp] = hw
        if len(result) == len(tps):
            return result
        if time.monotonic() > deadline:
            missing = sorted(f"{tp.topic}[{tp.partition}]" for tp in tps if tp not in result)
            raise TimeoutError(f"no high watermark for {', '.join(missing)}")
        pending = [tp for tp in tps if tp not in result]
        consumer.pause(*[tp for tp in tps if tp in result])
        consumer.resume(*pending)
        await consumer.getmany(*pending, timeout_ms=200)
        await asyncio.sleep(0)


async def first_offset_from(
    bootstrap: str | list[str],
    tp: TopicPartition,
    offset: int,
    timeout: float = PROBE_TIMEOUT_SECONDS,
    client_options: Mapping[str, Any] | None = None,
) -> int | None:
    """The offset of the first record at or after `offset` in `tp`, or None if there is none.

    Tells a real hole in a partition (records deleted by retention, transaction markers) from
    records that exist but were not delivered.
    """
    head = (await first_records_from(bootstrap, {tp: offset}, timeout, client_options))[tp]
    return head.offset if head else None


@dataclass(frozen=True, slots=True)
class RecordHead:
    """Where the first record at or after an offset is, and its Kafka timestamp."""

    offset: int
    timestamp_ms: int  # CreateTime or LogAppendTime, as the topic says; -1 when absent


async def first_records_from(
    bootstrap: str | list[str],
    offsets: Mapping[TopicPartition, int],
    timeout: float = PROBE_TIMEOUT_SECONDS,
    client_options: Mapping[str, Any] | None = None,
) -> dict[TopicPartition, RecordHead | None]:
    """The first record at or after the given offset of each partition (None if there is none
    before the high watermark), in one group-less fetch session.

    An offset below the log start reads from the log start. Raises `TimeoutError` if a
    partition does not answer within `timeout`.
    """
    if not offsets:
        return {}
    consumer = _probe_consumer(bootstrap, 1024, client_options)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        for tp, offset in offsets.items():
            consumer.seek(tp, offset)
        return await _collect_heads(consumer, list(offsets), time.monotonic() + timeout)
    finally:
        await consumer.stop()


async def _collect_heads(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], deadline: float
) -> dict[TopicPartition, RecordHead | None]:
    result: dict[TopicPartition, RecordHead | None] = {}
    while len(result) < len(tps):
        if time.monotonic() > deadline:
            missing = sorted(f"{tp.topic}[{tp.partition}]" for tp in tps if tp not in result)
            raise TimeoutError(f"no answer for {', '.join(missing)}")
        pending = [tp for tp in tps if tp not in result]
        consumer.pause(*[tp for tp in tps if tp in result])
        fetched = await consumer.getmany(*pending, timeout_ms=200)
        for tp, records in fetched.items():
            if records:
                result[tp] = RecordHead(int(records[0].offset), int(records[0].timestamp))
        for tp in (tp for tp in pending if tp not in result):
            highwater = consumer.highwater(tp)
            if highwater is not None and await consumer.position(tp) >= highwater:
                result[tp] = None
    return result


def leave_group_in_any_generation(coordinator: Any) -> None:
    """Make aiokafka's group coordinator send LeaveGroup on close in generation 0 as well.

    aiokafka leaves the group on close only when `generation > 0`: Apache Kafka numbers a
    group's generations from 1. Tansu numbers the first one 0, so a worker stopped with SIGTERM
    in the group's first generation never left it: its partitions waited a whole session timeout
    before another worker got them, as if it had been killed (seen in the scale benchmark,
    `--scale-chaos`). LeaveGroup carries the member id, not the generation, so sending it from a
    member in generation 0 is what aiokafka does in every later one; on Apache Kafka nothing
    changes. The order of aiokafka's close is kept (the coordination task ends first, then the
    LeaveGroup): leaving while a JoinGroup is still pending was tried and left Tansu's group
    rebalancing for ever (its remaining member re-joined the same generation every 8 s).
    Like aiokafka's, the attempt is made once; a failure is logged and the close goes on.
    """
    leave_as_aiokafka_does = coordinator._maybe_leave_group

    async def maybe_leave_group() -> None:
        member = coordinator.member_id != JoinGroupRequest.UNKNOWN_MEMBER_ID
        if coordinator.generation != 0 or not member or coordinator._group_instance_id is not None:
            return await leave_as_aiokafka_does()
        request = LeaveGroupRequest(coordinator.group_id, coordinator.member_id)
        try:
            await asyncio.wait_for(coordinator._send_req(request), LEAVE_TIMEOUT_SECONDS)
        except (KafkaError, TimeoutError) as err:
            log.error("LeaveGroup request (generation 0) failed: %r", err)
        else:
            log.info("LeaveGroup request (generation 0) succeeded")
        coordinator.reset_generation()

    coordinator._maybe_leave_group = maybe_leave_group
