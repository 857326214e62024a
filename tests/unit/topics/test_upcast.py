"""Schema evolution (issue 7): LoanApplied schema_version 2 renames `data.amount_cents` to
`data.requested_amount_cents`; version 1 messages are upcast on read.

Needs docs/proposals/loan-applied-v2-upcast.patch (lendstream/topics is the lead's): until it is applied these tests
are skipped; afterwards they run with the rest of tests/unit.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

upcast = pytest.importorskip(
    "lendstream.topics.upcast",
    reason="docs/proposals/loan-applied-v2-upcast.patch is not applied yet",
)

from lendstream.domain.loans import evolve  # noqa: E402
from lendstream.schemas import event_versions, json_schema  # noqa: E402
from lendstream.topics import LOAN_EVENTS, Event, Invalid, TopicSpec  # noqa: E402
from lendstream.topics.loans import LoanApplied, LoanAppliedV1  # noqa: E402


def v1(**data: Any) -> dict[str, Any]:
    return {
        "event_id": "e-1", "type": "LoanApplied", "occurred_at": "2026-01-31T12:00:00+02:00",
        "loan_id": "L1", "correlation_id": "c-1",
        "data": {"customer_id": "C1", "partner_id": "P1", "amount_cents": 100_000,
                 "currency": "EUR", "term_months": 12, **data},
    }  # fmt: skip


def v2(**data: Any) -> dict[str, Any]:
    value = v1()
    value["schema_version"] = 2
    value["data"]["requested_amount_cents"] = value["data"].pop("amount_cents")
    value["data"].update(data)
    return value


def decode(value: dict[str, Any]) -> Event | Invalid:
    return LOAN_EVENTS.decode(b"L1", orjson.dumps(value))


def test_the_current_version_is_2() -> None:
    assert LoanApplied.LATEST_SCHEMA_VERSION == 2
    assert isinstance(decode(v2()), LoanApplied)


@pytest.mark.parametrize("version", [None, 1])
def test_a_v1_message_reads_as_the_v2_event(version: int | None) -> None:
    value = v1()
    if version is not None:
        value["schema_version"] = version
    event = decode(value)
    assert isinstance(event, LoanApplied)
    assert event.schema_version == 2
    assert event.data.requested_amount_cents == 100_000
    assert event == decode(v2())  # same event, whichever version was sent
    assert event.occurred_at.isoformat() == "2026-01-31T12:00:00+02:00"
    assert event.correlation_id == "c-1"


def test_v1_and_v2_make_the_same_loan() -> None:
    loan_v1, loan_v2 = evolve(None, decode(v1())), evolve(None, decode(v2()))  # type: ignore[arg-type]
    assert loan_v1 == loan_v2
    assert loan_v1.applied_amount_cents == 100_000


def test_an_upcast_event_encodes_as_v2() -> None:
    event = decode(v1())
    assert isinstance(event, Event)
    key, value = TopicSpec.encode(event)
    assert orjson.loads(value)["schema_version"] == 2
    assert "requested_amount_cents" in orjson.loads(value)["data"]
    assert LOAN_EVENTS.decode(key, value) == event


def test_an_invalid_v1_message_is_reported_in_v1_field_names() -> None:
    result = decode(v1(amount_cents=-1))
    assert isinstance(result, Invalid) and result.error_class == "ValidationError"
    assert result.reason.startswith("data.amount_cents:")
    missing = v1()
    del missing["data"]["amount_cents"]
    result = decode(missing)
    assert isinstance(result, Invalid) and result.reason.startswith("data.amount_cents:")


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (v2(amount_cents=5), "data.amount_cents"),  # a v1 field in v2
        ({**v1(requested_amount_cents=5)}, "data.requested_amount_cents"),  # a v2 field in v1
        ({**v2(), "schema_version": 1}, "data"),  # v2 shape, labelled v1
    ],
)
def test_the_versions_do_not_mix(value: dict[str, Any], field: str) -> None:
    result = decode(value)
    assert isinstance(result, Invalid)
    assert field in result.reason


def test_a_version_newer_than_2_is_invalid() -> None:
    result = decode({**v2(), "schema_version": 3})
    assert isinstance(result, Invalid)
    assert result.reason == "schema_version: 3 is newer than this code knows (2)"


def test_the_upcaster_does_not_change_its_input() -> None:
    value = v1()
    before = copy.deepcopy(value)
    decode(value)
    assert value == before


def test_both_versions_are_exported_with_their_own_schema() -> None:
    versions = {e.id: e for e in event_versions() if e.name == "LoanApplied"}
    assert sorted(versions) == ["LoanApplied.v1", "LoanApplied.v2"]
    assert versions["LoanApplied.v1"].model is LoanAppliedV1
    old, new = json_schema(versions["LoanApplied.v1"]), json_schema(versions["LoanApplied.v2"])
    assert "amount_cents" in old["properties"]["data"]["properties"]
    assert "requested_amount_cents" in new["properties"]["data"]["properties"]
    assert new["properties"]["schema_version"]["const"] == 2
    assert "schema_version" in new["required"] and "schema_version" not in old["required"]
