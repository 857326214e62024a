"""Topic administration: the topics lendstream relies on, created idempotently.

Topics must exist with `LENDSTREAM_PARTITIONS` partitions before anything produces to them: a
broker that auto-creates topics would otherwise pick its own partition count and break the
co-partitioning of the loan-keyed topics.
"""

from __future__ import annotations

import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from lendstream.topics import ALL, CUSTOMER_NOTIFICATIONS_TOPIC, DEAD_LETTERS_TOPIC

log = logging.getLogger(__name__)

EVENT_TOPICS = (*[spec.name for spec in ALL], DEAD_LETTERS_TOPIC, CUSTOMER_NOTIFICATIONS_TOPIC)


async def ensure_topics(
    bootstrap: str | list[str],
    partitions: int,
    replication: int = 1,
    names: tuple[str, ...] = EVENT_TOPICS,
) -> list[str]:
    """Create the missing topics among `names`; returns the ones created now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics(
                    [NewTopic(name, partitions, replication) for name in missing]
                )
            log.info("created topics %s with %d partitions", ", ".join(missing), partitions)
        return missing
    finally:
        await admin.close()
