"""HTTP ingest, pure parts: body limits, validation with the codecs, errors, auth, duplicates."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka.structs import RecordMetadata

from lendstream.ingest import (
    MAX_BODY_BYTES,
    MAX_ITEMS,
    Item,
    Rejected,
    authorized,
    claimed_key,
    first_seen,
    parse_body,
    produce,
    read_body,
    topic_spec,
    validate_items,
)
from lendstream.topics import LOAN_EVENTS, TREASURY_EVENTS


def applied(n: int = 1, **data: Any) -> dict[str, Any]:
    return {
        "event_id": f"e{n}", "type": "LoanApplied", "occurred_at": "2026-01-31T12:00:00Z",
        "loan_id": f"L{n}",
        "data": {"customer_id": "C1", "partner_id": "P1", "amount_cents": 1000,
                 "currency": "EUR", "term_months": 12, **data},
    }  # fmt: skip


def credit_line() -> dict[str, Any]:
    return {
        "event_id": "t1", "type": "CreditLineSet", "occurred_at": "2026-01-31T12:00:00Z",
        "data": {"partner_id": "P7", "currency": "EUR", "limit_cents": 0},
    }  # fmt: skip


def rejected(call: Any, *args: Any) -> Rejected:
    with pytest.raises(Rejected) as info:
        call(*args)
    return info.value


# -- body ---------------------------------------------------------------------------------------


def test_one_envelope_or_an_array() -> None:
    assert parse_body(orjson.dumps(applied())) == [applied()]
    assert parse_body(orjson.dumps([applied(1), applied(2)])) == [applied(1), applied(2)]


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff", b"{'a': 1}", b"[1,]", b'{"a": NaN}'])
def test_a_body_that_is_not_json_is_400(raw: bytes) -> None:
    answer = rejected(parse_body, raw)
    assert answer.status == 400 and answer.body["error"].startswith("body is not JSON")


@pytest.mark.parametrize("raw", [b"1", b'"x"', b"null", b"true", b"[]"])
def test_json_that_is_no_envelope_or_array_of_them_is_400(raw: bytes) -> None:
    assert rejected(parse_body, raw).status == 400


def test_limits_are_413() -> None:
    at_limit = orjson.dumps([applied()] * MAX_ITEMS)
    assert len(parse_body(at_limit)) == MAX_ITEMS
    assert rejected(parse_body, orjson.dumps([applied()] * (MAX_ITEMS + 1))).status == 413
    padded = orjson.dumps(applied())
    padded += b" " * (MAX_BODY_BYTES - len(padded))
    assert parse_body(padded) == [applied()]
    assert rejected(parse_body, padded + b" ").status == 413


async def chunks(*parts: bytes) -> Any:
    for part in parts:
        yield part


async def test_read_body_stops_keeping_bytes_past_the_limit() -> None:
    assert await read_body(3, chunks(b"a", b"bc")) == b"abc"
    with pytest.raises(Rejected) as info:
        await read_body(None, chunks(b"x" * MAX_BODY_BYTES, b"y"))
    assert info.value.status == 413
    with pytest.raises(Rejected):  # announced too large: no read at all
        await read_body(10**9, chunks())


# -- topics and auth ---------------------------------------------------------------------------


def test_only_upstream_topics_take_events() -> None:
    assert topic_spec("loan-events") is LOAN_EVENTS
    for name in ("payout-events", "dead-letters", "nope", ""):
        answer = rejected(topic_spec, name)
        assert answer.status == 404
        assert answer.body["topics"] == ["loan-events", "payment-events", "treasury-events"]


@pytest.mark.parametrize(
    ("header", "ok"),
    [("Bearer s3cret", True), ("bearer s3cret", True), ("Bearer  s3cret ", True),
     ("Bearer wrong", False), ("Basic s3cret", False), ("s3cret", False), ("", False),
     (None, False)],
)  # fmt: skip
def test_bearer_token(header: str | None, ok: bool) -> None:
    assert authorized(header, "s3cret") is ok
    assert authorized(header, None) is True  # no token configured: open


# -- validation ---------------------------------------------------------------------------------


def test_valid_items_are_keyed_by_their_event() -> None:
    items = validate_items(LOAN_EVENTS, [applied(1), applied(2)])
    assert [(i.index, i.event_id, i.key) for i in items] == [(0, "e1", b"L1"), (1, "e2", b"L2")]
    assert orjson.loads(items[0].value) == applied(1)  # the item as sent
    (line,) = validate_items(TREASURY_EVENTS, [credit_line()])
    assert line.key == b"P7"


def test_claimed_key_is_where_the_topic_keeps_it() -> None:
    assert claimed_key(LOAN_EVENTS, applied(3)) == "L3"
    assert claimed_key(TREASURY_EVENTS, credit_line()) == "P7"
    assert claimed_key(LOAN_EVENTS, {"loan_id": 5}) is None
    assert claimed_key(TREASURY_EVENTS, {"data": []}) is None
    assert claimed_key(LOAN_EVENTS, [1]) is None


def test_one_invalid_item_rejects_the_request_with_every_error() -> None:
    batch = [
        applied(1),
        applied(2, amount_cents=0, currency="XYZ"),
        {**applied(3), "type": "LoanExploded"},
        "not an object",
        {**applied(5), "occurred_at": "yesterday"},
        {**applied(6), "schema_version": 99},
    ]
    answer = rejected(validate_items, LOAN_EVENTS, batch)
    assert answer.status == 422
    assert answer.body["error"] == "5 of 6 events are invalid; nothing was accepted"
    found = [
        (e["index"], e["event_id"], e["field"], e["error_class"]) for e in answer.body["errors"]
    ]
    assert found == [
        (1, "e2", "data.amount_cents", "ValidationError"),
        (1, "e2", "data.currency", "ValidationError"),
        (2, "e3", "type", "UnknownType"),
        (3, None, None, "NotAnObject"),
        (4, "e5", "occurred_at", "ValidationError"),
        (5, "e6", found[5][2], "ValidationError"),  # field None, or "schema_version" once
    ]  # the codec checks the version first (docs/proposals/loan-applied-v2-upcast.patch)
    assert found[5][2] in (None, "schema_version")
    reasons = [e["reason"] for e in answer.body["errors"]]
    assert "greater than 0" in reasons[0] and "XYZ" in reasons[1]
    assert "99 is newer" in reasons[5]


def test_a_missing_key_field_is_a_field_error_not_a_key_mismatch() -> None:
    no_loan = {k: v for k, v in applied().items() if k != "loan_id"}
    answer = rejected(validate_items, LOAN_EVENTS, [no_loan])
    assert [(e["field"], e["error_class"]) for e in answer.body["errors"]] == [
        ("loan_id", "ValidationError")
    ]


def test_first_seen_keeps_the_first_copy_of_each_event_id() -> None:
    items = validate_items(LOAN_EVENTS, [applied(1), applied(2), applied(1, term_months=3)])
    fresh, repeated = first_seen(items)
    assert [(i.index, i.event_id) for i in fresh] == [(0, "e1"), (1, "e2")]
    assert repeated == ["e1"]


# -- produce: every send in flight, each outcome kept -------------------------------------------


async def test_produce_reports_each_acknowledgement_or_error() -> None:
    items = validate_items(LOAN_EVENTS, [applied(1), applied(2), applied(3)])
    loop = asyncio.get_running_loop()
    sent: list[tuple[str, bytes]] = []

    async def send(topic: str, key: bytes, value: bytes) -> asyncio.Future[RecordMetadata]:
        if key == b"L3":
            raise RuntimeError("no metadata for topic")
        sent.append((topic, key))
        future: asyncio.Future[RecordMetadata] = loop.create_future()
        if key == b"L2":
            future.set_exception(TimeoutError("broker gone"))
        else:
            future.set_result(RecordMetadata(topic, 0, None, 7, -1, 0, -1))  # type: ignore[arg-type]
        return future

    results = await produce(send, "loan-events", items)
    assert sent == [("loan-events", b"L1"), ("loan-events", b"L2")]
    assert isinstance(results["e1"], RecordMetadata) and results["e1"].offset == 7
    assert isinstance(results["e2"], TimeoutError)
    assert isinstance(results["e3"], RuntimeError)


def test_item_exposes_its_event_id() -> None:
    (item,) = validate_items(LOAN_EVENTS, [applied(9)])
    assert isinstance(item, Item) and item.event_id == "e9"
