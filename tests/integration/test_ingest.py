"""HTTP ingest against a real worker, broker and PostgreSQL (contract §7, issue 7).

Valid, invalid, oversized and duplicate batches each get the right answer, and what reaches
Kafka — read back with a real consumer — is exactly the valid, first-seen events, keyed and
partitioned as a Kafka producer would, and applied by the pipeline.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from lendstream.embedded import free_port
from lendstream.ingest import MAX_BODY_BYTES, MAX_ITEMS
from tests.harness import Pipeline, WorkerProcess, partition_of, read_topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOKEN = "ingest-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPSTREAM = ("loan-events", "payment-events", "treasury-events")


def loan_applied(n: int, **data: Any) -> dict[str, Any]:
    return {
        "event_id": f"ev-applied-{n}",
        "type": "LoanApplied",
        "occurred_at": "2026-03-01T09:00:00Z",
        "loan_id": f"L-http-{n}",
        "data": {"customer_id": f"C{n}", "partner_id": "P1", "amount_cents": 100_000,
                 "currency": "EUR", "term_months": 12, **data},
    }  # fmt: skip


def loan_rejected(n: int) -> dict[str, Any]:
    return {
        "event_id": f"ev-rejected-{n}", "type": "LoanRejected",
        "occurred_at": "2026-03-01T10:00:00+01:00", "loan_id": f"L-http-{n}",
        "data": {"reason": "affordability"},
    }  # fmt: skip


def credit_line(partner: str) -> dict[str, Any]:
    return {
        "event_id": f"ev-line-{partner}", "type": "CreditLineSet",
        "occurred_at": "2026-03-01T08:00:00Z",
        "data": {"partner_id": partner, "currency": "EUR", "limit_cents": 10_000_000},
    }  # fmt: skip


def repayment(n: int) -> dict[str, Any]:
    return {
        "event_id": f"ev-repay-{n}", "type": "RepaymentReceived",
        "occurred_at": "2026-04-01T08:00:00Z", "loan_id": f"L-http-{n}",
        "data": {"payment_id": f"pay-{n}", "amount_cents": 500, "currency": "EUR"},
    }  # fmt: skip


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def post(
        self, topic: str, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else orjson.dumps(body)
        hdrs = {"Content-Type": "application/json", **AUTH, **(headers or {})}
        async with self.session.post(f"{self.base}/events/{topic}", data=data, headers=hdrs) as r:
            assert r.content_type == "application/json", await r.text()
            return r.status, await r.json()


async def wait_ready(session: aiohttp.ClientSession, base: str, worker: WorkerProcess) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert worker.alive(), worker.log_tail()
        try:
            async with session.get(f"{base}/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, f"worker not ready:\n{worker.log_tail()}"
        await asyncio.sleep(0.25)


async def test_ingest_answers_and_exactly_the_valid_first_seen_events_reach_kafka(
    pipeline: Pipeline,
) -> None:
    await pipeline.create_topics()
    port = free_port()
    worker = pipeline.start_worker(web_port=port, ingest_token=TOKEN)
    base = f"http://127.0.0.1:{port}"
    expected: list[tuple[str, dict[str, Any]]] = []  # (topic, envelope) that must reach Kafka

    async with aiohttp.ClientSession() as session:
        await wait_ready(session, base, worker)
        http = Client(session, base)

        # authentication
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"},
                        {"Authorization": f"Basic {TOKEN}"}):  # fmt: skip
            status, body = await http.post("loan-events", loan_applied(0), headers=headers)
            assert status == 401 and "bearer token" in body["error"]

        # unknown topics, including one lendstream writes itself
        for topic in ("nope", "payout-events", "dead-letters"):
            status, body = await http.post(topic, loan_applied(0))
            assert status == 404 and body["topics"] == sorted(UPSTREAM)

        # not JSON, or JSON that is neither an envelope nor an array of them
        for raw in (b"{not json", b"", b"\xff\xfe", b"[]", b"42", b'"LoanApplied"'):
            status, body = await http.post("loan-events", None, raw=raw)
            assert status == 400, (raw, body)

        # too many items, too many bytes
        status, body = await http.post("loan-events", [loan_applied(0)] * (MAX_ITEMS + 1))
        assert status == 413 and str(MAX_ITEMS) in body["error"]
        padded = orjson.dumps([loan_applied(0)]) + b" " * MAX_BODY_BYTES
        status, body = await http.post("loan-events", None, raw=padded)
        assert status == 413 and str(MAX_BODY_BYTES) in body["error"]

        # one invalid item spoils the batch; each error names index and field
        batch = [loan_applied(1), loan_applied(2, amount_cents=-5), loan_applied(3),
                 {**loan_applied(4), "surprise": 1}, [1, 2]]  # fmt: skip
        status, body = await http.post("loan-events", batch)
        assert status == 422
        errors = {(e["index"], e["field"]) for e in body["errors"]}
        assert errors == {(1, "data.amount_cents"), (3, "surprise"), (4, None)}
        assert body["errors"][0]["event_id"] == "ev-applied-2"
        assert "greater than 0" in body["errors"][0]["reason"]
        assert "3 of 5" in body["error"]

        # a valid batch: 202 with the ids
        batch = [loan_applied(n) for n in range(1, 6)]
        status, body = await http.post("loan-events", batch)
        assert status == 202, body
        assert body["ids"] == [e["event_id"] for e in batch]
        assert (body["produced"], body["duplicates"]) == (5, [])
        expected += [("loan-events", e) for e in batch]

        # the same batch again: all duplicates, nothing produced
        status, body = await http.post("loan-events", batch)
        assert status == 202 and body["produced"] == 0
        assert body["duplicates"] == sorted(e["event_id"] for e in batch)

        # duplicates within the request and from earlier requests; the first copy wins
        batch = [loan_rejected(1), loan_applied(2), loan_rejected(1), loan_applied(6)]
        status, body = await http.post("loan-events", batch)
        assert status == 202 and body["produced"] == 2
        assert body["duplicates"] == ["ev-applied-2", "ev-rejected-1"]
        expected += [("loan-events", loan_rejected(1)), ("loan-events", loan_applied(6))]

        # one envelope (not an array), other topics
        status, body = await http.post("treasury-events", credit_line("P1"))
        assert status == 202 and body["ids"] == ["ev-line-P1"]
        expected.append(("treasury-events", credit_line("P1")))
        status, body = await http.post("payment-events", [repayment(3)])
        assert status == 202 and body["produced"] == 1
        expected.append(("payment-events", repayment(3)))

        # two concurrent requests with the same new ids: exactly one produces each id
        batch = [loan_applied(n) for n in range(7, 17)]
        answers = await asyncio.gather(*(http.post("loan-events", batch) for _ in range(2)))
        assert [status for status, _ in answers] == [202, 202]
        assert sorted(body["produced"] for _, body in answers) == [0, 10]
        expected += [("loan-events", e) for e in batch]

    records = await read_topics(pipeline.settings.bootstrap_servers, UPSTREAM, 8)
    got = sorted((r.topic, orjson.loads(r.value)["event_id"]) for r in records)
    assert got == sorted((topic, e["event_id"]) for topic, e in expected)
    by_id = {e["event_id"]: e for _, e in expected}
    for record in records:
        sent = by_id[orjson.loads(record.value)["event_id"]]
        assert orjson.loads(record.value) == sent  # the item as sent
        key = sent.get("loan_id") or sent["data"]["partner_id"]
        assert record.key == key.encode()
        assert record.partition == partition_of(record.key, 8)

    # and the pipeline applies them like any other event
    for record in records:
        tp = (record.topic, record.partition)
        if record.topic != "treasury-events":
            pipeline.ends[tp] = max(pipeline.ends.get(tp, -1), record.offset)
    await pipeline.wait_caught_up(timeout=120)
    rows = await pipeline.fetch("SELECT loan_id, status FROM loan_summary ORDER BY loan_id")
    statuses = {r["loan_id"]: r["status"] for r in rows}
    assert statuses["L-http-1"] == "rejected"
    assert statuses["L-http-6"] == "applied"
    assert len(statuses) == 16
