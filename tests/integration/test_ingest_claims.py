"""The ingest's event_id claims in a real PostgreSQL, with the broker faked at its edge (so that
it can refuse chosen events): what is produced when the broker fails part of a batch, when the
request is retried, and when requests overlap."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka.structs import RecordMetadata
from prometheus_client import CollectorRegistry

from lendstream.embedded import Postgres
from lendstream.ingest import Ingest, Rejected
from lendstream.metrics import Metrics
from lendstream.projections.migrate import migrate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class FakeBroker:
    """Acknowledges every send except keys in `refuse`; counts what it took per event_id."""

    def __init__(self) -> None:
        self.refuse: set[bytes] = set()
        self.taken: Counter[str] = Counter()
        self.offset = 0

    async def send(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[RecordMetadata]:
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        await asyncio.sleep(random.random() / 100)  # let concurrent requests interleave
        if key in self.refuse:
            future.set_exception(TimeoutError(f"broker refused {key.decode()}"))
        else:
            self.taken[orjson.loads(value)["event_id"]] += 1
            self.offset += 1
            future.set_result(RecordMetadata(topic, 3, None, self.offset, -1, 0, -1))  # type: ignore[arg-type]
        return future


def body(*ns: int) -> bytes:
    return orjson.dumps([
        {"event_id": f"e{n}", "type": "LoanRejected", "occurred_at": "2026-01-31T12:00:00Z",
         "loan_id": f"L{n}", "data": {"reason": "no"}}
        for n in ns
    ])  # fmt: skip


@pytest.fixture
async def ingest(postgres: Postgres, pg_schema: str) -> AsyncIterator[tuple[Ingest, FakeBroker]]:
    pool = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn, pg_schema)
    broker = FakeBroker()
    service = Ingest(pg_schema, None, broker.send, Metrics(CollectorRegistry()), pool=pool)
    service.connected.set()
    try:
        yield service, broker
    finally:
        await pool.close()


async def test_a_partly_refused_batch_keeps_what_the_broker_took(
    ingest: tuple[Ingest, FakeBroker], pg_schema: str, postgres: Postgres
) -> None:
    service, broker = ingest
    broker.refuse = {b"L2", b"L4"}
    with pytest.raises(Rejected) as info:
        await service.handle("loan-events", None, body(1, 2, 3, 4))
    answer: dict[str, Any] = info.value.body
    assert info.value.status == 503
    assert (answer["produced"], answer["failed"]) == (["e1", "e3"], ["e2", "e4"])
    assert "refused" in answer["error"]

    broker.refuse = set()
    retried = await service.handle("loan-events", None, body(1, 2, 3, 4))
    assert (retried["produced"], retried["duplicates"]) == (2, ["e1", "e3"])
    assert broker.taken == Counter({"e1": 1, "e2": 1, "e3": 1, "e4": 1})

    conn = await asyncpg.connect(postgres.dsn)
    try:
        rows = await conn.fetch(
            f'SELECT event_id, topic, partition, "offset" FROM "{pg_schema}".ingest_accepted '
            "ORDER BY event_id"
        )
    finally:
        await conn.close()
    assert [(r["event_id"], r["topic"], r["partition"]) for r in rows] == [
        (f"e{n}", "loan-events", 3) for n in (1, 2, 3, 4)
    ]
    assert len({r["offset"] for r in rows}) == 4


async def test_overlapping_concurrent_requests_produce_each_id_once(
    ingest: tuple[Ingest, FakeBroker],
) -> None:
    service, broker = ingest
    rng = random.Random(7)
    requests = [rng.sample(range(40), 15) for _ in range(12)]  # overlapping, in any order
    answers = await asyncio.gather(
        *(service.handle("loan-events", None, body(*r)) for r in requests)
    )
    assert set(broker.taken) == {f"e{n}" for r in requests for n in r}
    assert set(broker.taken.values()) == {1}
    assert sum(a["produced"] for a in answers) == len(broker.taken)
