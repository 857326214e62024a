"""The wire codec (contract §2, §3): `decode` returns an event or `Invalid`, and never raises."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lendstream.topics import (
    ALL,
    LOAN_EVENTS,
    PAYMENT_EVENTS,
    PAYOUT_EVENTS,
    TREASURY_EVENTS,
    Event,
    Invalid,
    TopicSpec,
)
from lendstream.topics.codec import MAX_VALUE_BYTES, NUL_REASON, holds_nul, key_text
from lendstream.topics.envelope import MAX_CENTS

PID = "payout:L1"
#: One valid `data` for every event type, by topic.
DATA: dict[str, dict[str, dict[str, Any]]] = {
    "loan-events": {
        "LoanApplied": {
            "customer_id": "C1",
            "partner_id": "P1",
            "amount_cents": 100_000,
            "currency": "EUR",
            "term_months": 12,
        },
        "LoanApproved": {"approved_amount_cents": 90_000, "interest_rate_bps": 750},
        "LoanRejected": {"reason": "affordability"},
        "LoanCanceled": {"reason": "customer withdrew"},
    },
    "payment-events": {
        "RepaymentReceived": {"payment_id": "pay-1", "amount_cents": 5_000, "currency": "EUR"},
    },
    "payout-events": {
        "PayoutRequested": {
            "payout_id": PID,
            "partner_id": "P1",
            "amount_cents": 90_000,
            "currency": "EUR",
        },
        "FundsReserved": {"payout_id": PID, "partner_id": "P1", "amount_cents": 90_000},
        "FundsReservationFailed": {"payout_id": PID, "partner_id": "P1", "reason": "limit"},
        "PayoutSent": {"payout_id": PID},
        "PayoutFailed": {"payout_id": PID, "reason": "gateway said no"},
        "FundsReleased": {"payout_id": PID, "partner_id": "P1", "amount_cents": 90_000},
        "LoanPaidOut": {"payout_id": PID, "amount_cents": 90_000, "currency": "EUR"},
    },
    "treasury-events": {
        "CreditLineSet": {"partner_id": "P1", "currency": "EUR", "limit_cents": 1_000_000},
    },
}
SPECS = {spec.name: spec for spec in ALL}
CASES = [(topic, kind) for topic, kinds in DATA.items() for kind in kinds]
LOAN_CASES = [(topic, kind) for topic, kind in CASES if topic != "treasury-events"]
#: (topic, type, data field) of every amount that must be > 0.
POSITIVE_AMOUNTS = [
    (topic, kind, field)
    for topic, kind in CASES
    for field in DATA[topic][kind]
    if field.endswith("_cents") and field != "limit_cents"
]
CURRENCY_FIELDS = [(topic, kind) for topic, kind in CASES if "currency" in DATA[topic][kind]]


def latest_data(topic: str, kind: str) -> dict[str, Any]:
    """`DATA` (schema_version 1) as the latest version has it (see test_upcast.py)."""
    data = dict(DATA[topic][kind])
    if kind == "LoanApplied":
        data["requested_amount_cents"] = data.pop("amount_cents")
    return data


def envelope(topic: str, kind: str, **overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "event_id": "e-1",
        "type": kind,
        "schema_version": 1,
        "occurred_at": "2026-01-31T12:00:00Z",
        "data": copy.deepcopy(DATA[topic][kind]),
    }
    if topic != "treasury-events":
        value["loan_id"] = "L1"
    value.update(overrides)
    return value


def key_of(topic: str) -> bytes:
    return b"P1" if topic == "treasury-events" else b"L1"


def decode(topic: str, value: Any, key: bytes | None = None) -> Event | Invalid:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return SPECS[topic].decode(key_of(topic) if key is None else key, raw)


def invalid(topic: str, value: Any, key: bytes | None = None) -> Invalid:
    result = decode(topic, value, key)
    assert isinstance(result, Invalid), f"expected Invalid, got {result!r}"
    assert result.reason and "\n" not in result.reason  # one readable line
    return result


def with_data(topic: str, kind: str, **changes: Any) -> dict[str, Any]:
    value = envelope(topic, kind)
    value["data"].update(changes)
    return value


def without(value: dict[str, Any], field: str, in_data: bool = False) -> dict[str, Any]:
    (value["data"] if in_data else value).pop(field)
    return value


# -- valid events -----------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "kind"), CASES)
def test_valid_event_of_every_type(topic: str, kind: str) -> None:
    event = decode(topic, envelope(topic, kind, correlation_id="c-1", causation_id="e-0"))
    assert isinstance(event, Event), event
    latest = SPECS[topic].latest[kind]
    assert (event.type, event.event_id, event.schema_version) == (kind, "e-1", latest)
    assert (event.correlation_id, event.causation_id) == ("c-1", "e-0")
    assert event.key == key_of(topic).decode()
    assert event.data.model_dump() == latest_data(topic, kind)  # type: ignore[attr-defined]
    assert event.occurred_at.isoformat() == "2026-01-31T12:00:00+00:00"


@pytest.mark.parametrize(("topic", "kind"), CASES)
def test_encode_then_decode_is_the_same_event(topic: str, kind: str) -> None:
    event = decode(topic, envelope(topic, kind))
    assert isinstance(event, Event)
    key, value = TopicSpec.encode(event)
    assert SPECS[topic].decode(key, value) == event


@pytest.mark.parametrize(("topic", "kind"), CASES)
def test_optional_envelope_fields_may_be_left_out(topic: str, kind: str) -> None:
    value = without(envelope(topic, kind), "schema_version")
    event = decode(topic, value)
    assert isinstance(event, Event)
    assert event.schema_version == SPECS[topic].latest[kind]  # version 1, upcast to the latest
    assert event.correlation_id is None and event.causation_id is None


@pytest.mark.parametrize(("topic", "kind"), CASES)
def test_an_event_of_another_topic_is_an_unknown_type(topic: str, kind: str) -> None:
    for other in ALL:
        if other.name != topic:
            result = invalid(other.name, envelope(topic, kind))
            assert result.error_class == "UnknownType"
            assert kind in result.reason and other.name in result.reason


@pytest.mark.parametrize(
    ("occurred_at", "expected"),
    [
        ("2026-01-31T12:00:00+02:00", "2026-01-31T12:00:00+02:00"),
        ("2026-01-31T12:00:00-05:30", "2026-01-31T12:00:00-05:30"),
        ("2026-01-31t12:00:00z", "2026-01-31T12:00:00+00:00"),
        ("2026-01-31 12:00:00Z", "2026-01-31T12:00:00+00:00"),
        ("2026-01-31T12:00:00.5Z", "2026-01-31T12:00:00.500000+00:00"),
        ("2026-01-31T12:00:00.123456789Z", "2026-01-31T12:00:00.123456+00:00"),
    ],
)
def test_occurred_at_accepts_rfc3339_with_offset(occurred_at: str, expected: str) -> None:
    event = decode("loan-events", envelope("loan-events", "LoanRejected", occurred_at=occurred_at))
    assert isinstance(event, Event)
    assert event.occurred_at.isoformat() == expected


def test_boundary_values_are_valid() -> None:
    for data in (
        {"amount_cents": 1, "term_months": 1},
        {"amount_cents": MAX_CENTS, "term_months": 480},
    ):
        assert isinstance(
            decode("loan-events", with_data("loan-events", "LoanApplied", **data)), Event
        )
    zero_rate = with_data("loan-events", "LoanApproved", interest_rate_bps=0)
    assert isinstance(decode("loan-events", zero_rate), Event)
    zero_limit = with_data("treasury-events", "CreditLineSet", limit_cents=0)
    assert isinstance(decode("treasury-events", zero_limit), Event)


def test_key_may_be_given_as_text_to_validate() -> None:
    assert isinstance(LOAN_EVENTS.validate(envelope("loan-events", "LoanRejected"), "L1"), Event)


# -- not JSON, not an object, no value, too large ----------------------------------------------


@pytest.mark.parametrize(
    "raw", [b"not json", b"", b"{", b"\xff\xfe\x00", b'{"a": NaN}', b"{'a': 1}"]
)
def test_bytes_that_are_not_json(raw: bytes) -> None:
    result = invalid("loan-events", raw)
    assert result.error_class == "NotJson"
    assert "not JSON" in result.reason


@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b"1", b"1.5", b'"LoanApplied"', b"null", b"true"])
def test_json_that_is_not_an_object(raw: bytes) -> None:
    result = invalid("loan-events", raw)
    assert result.error_class == "NotAnObject"
    assert "not an object" in result.reason


def test_a_missing_value_is_invalid() -> None:
    for spec in ALL:
        result = spec.decode(b"L1", None)
        assert result == Invalid("EmptyValue", "message has no value (tombstone)")


def test_a_value_over_one_mebibyte_is_invalid() -> None:
    raw = orjson.dumps(envelope("loan-events", "LoanRejected"))
    at_limit = raw + b" " * (MAX_VALUE_BYTES - len(raw))  # JSON allows trailing whitespace
    assert len(at_limit) == MAX_VALUE_BYTES
    assert isinstance(LOAN_EVENTS.decode(b"L1", at_limit), Event)
    result = invalid("loan-events", at_limit + b" ")
    assert result.error_class == "TooLarge"
    assert str(MAX_VALUE_BYTES + 1) in result.reason and str(MAX_VALUE_BYTES) in result.reason


# -- envelope ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["event_id", "occurred_at", "loan_id", "data"])
@pytest.mark.parametrize(("topic", "kind"), LOAN_CASES)
def test_each_required_envelope_field_missing(topic: str, kind: str, field: str) -> None:
    result = invalid(topic, without(envelope(topic, kind), field))
    assert result.error_class == "ValidationError"
    assert result.reason.startswith(f"{field}:")
    assert "required" in result.reason.lower()


@pytest.mark.parametrize("field", ["event_id", "occurred_at", "data"])
def test_required_envelope_fields_of_treasury_events(field: str) -> None:
    result = invalid(
        "treasury-events", without(envelope("treasury-events", "CreditLineSet"), field)
    )
    assert result.reason.startswith(f"{field}:")


@pytest.mark.parametrize(("topic", "kind"), CASES)
def test_a_missing_type_is_invalid(topic: str, kind: str) -> None:
    result = invalid(topic, without(envelope(topic, kind), "type"))
    assert result.error_class == "UnknownType"
    assert result.reason.startswith("type:")


@pytest.mark.parametrize("kind", ["LoanFrozen", "loanapplied", "", "Event", "LoanEvent"])
def test_an_unknown_type_is_invalid(kind: str) -> None:
    result = invalid("loan-events", envelope("loan-events", "LoanApplied", type=kind))
    assert result.error_class == "UnknownType"
    assert result.reason.startswith("type:") and "loan-events" in result.reason


@pytest.mark.parametrize("kind", [None, 1, True, [], ["LoanApplied"], {}, {"a": 1}])
def test_a_type_that_is_not_a_string_is_invalid(kind: Any) -> None:
    result = invalid("loan-events", envelope("loan-events", "LoanApplied", type=kind))
    assert result.error_class == "UnknownType"
    assert result.reason.startswith("type:")


@pytest.mark.parametrize(("topic", "kind"), CASES)
def test_an_unknown_envelope_field_is_invalid(topic: str, kind: str) -> None:
    result = invalid(topic, envelope(topic, kind, priority="high"))
    assert result.error_class == "ValidationError"
    assert result.reason.startswith("priority:")


def test_loan_id_on_treasury_events_is_an_unknown_field() -> None:
    result = invalid("treasury-events", envelope("treasury-events", "CreditLineSet", loan_id="L1"))
    assert result.reason.startswith("loan_id:")


@pytest.mark.parametrize(("topic", "kind"), CASES)
def test_an_unknown_data_field_is_invalid(topic: str, kind: str) -> None:
    result = invalid(topic, with_data(topic, kind, note="hello"))
    assert result.error_class == "ValidationError"
    assert result.reason.startswith("data.note:")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", 123),
        ("event_id", ""),
        ("event_id", None),
        ("loan_id", 1),
        ("loan_id", ""),
        ("schema_version", "1"),
        ("schema_version", 1.0),
        ("schema_version", True),
        ("schema_version", 0),
        ("correlation_id", 5),
        ("causation_id", ""),
        ("data", []),
        ("data", "reason"),
        ("data", None),
    ],
)
def test_wrong_envelope_types(field: str, value: Any) -> None:
    result = invalid("loan-events", envelope("loan-events", "LoanRejected", **{field: value}))
    assert result.error_class == "ValidationError"
    assert result.reason.startswith(f"{field}:")


@pytest.mark.parametrize(
    "occurred_at",
    [
        "2026-01-31T12:00:00",  # no offset
        "2026-01-31",
        "12:00:00Z",
        "2026-02-30T12:00:00Z",  # no such day
        "2026-01-31T25:00:00Z",
        "2026-01-31T12:00:00+25:00",
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC: stored, but not readable back
        "9999-12-31T23:59:59-00:01",  # after 9999 in UTC
        "31/01/2026 12:00",
        "",
        1769860800,
        1769860800.5,
        True,
        None,
        ["2026-01-31T12:00:00Z"],
    ],
)
def test_occurred_at_must_be_rfc3339_with_offset(occurred_at: Any) -> None:
    value = envelope("loan-events", "LoanRejected", occurred_at=occurred_at)
    result = invalid("loan-events", value)
    assert result.error_class == "ValidationError"
    assert result.reason.startswith("occurred_at:")


@pytest.mark.parametrize(("topic", "kind"), CASES)
def test_a_schema_version_newer_than_known_is_invalid(topic: str, kind: str) -> None:
    newer = SPECS[topic].latest[kind] + 1
    result = invalid(topic, envelope(topic, kind, schema_version=newer))
    assert result.error_class == "ValidationError"
    assert result.reason == (f"schema_version: {newer} is newer than this code knows ({newer - 1})")


# -- data -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "kind", "field"), POSITIVE_AMOUNTS)
@pytest.mark.parametrize("amount", [0, -1, -100_000])
def test_zero_and_negative_amounts_are_invalid(
    topic: str, kind: str, field: str, amount: int
) -> None:
    result = invalid(topic, with_data(topic, kind, **{field: amount}))
    assert result.error_class == "ValidationError"
    assert result.reason.startswith(f"data.{field}:")
    assert "greater than 0" in result.reason


@pytest.mark.parametrize(("topic", "kind", "field"), POSITIVE_AMOUNTS)
def test_amounts_above_the_maximum_are_invalid(topic: str, kind: str, field: str) -> None:
    result = invalid(topic, with_data(topic, kind, **{field: MAX_CENTS + 1}))
    assert result.reason.startswith(f"data.{field}:")


def test_a_negative_credit_limit_is_invalid() -> None:
    result = invalid(
        "treasury-events", with_data("treasury-events", "CreditLineSet", limit_cents=-1)
    )
    assert result.reason.startswith("data.limit_cents:")


@pytest.mark.parametrize(("topic", "kind", "field"), POSITIVE_AMOUNTS)
@pytest.mark.parametrize("amount", ["100", "1e3", 100.0, 100.5, True, False, None, [100]])
def test_amounts_must_be_integers(topic: str, kind: str, field: str, amount: Any) -> None:
    result = invalid(topic, with_data(topic, kind, **{field: amount}))
    assert result.error_class == "ValidationError"
    assert result.reason.startswith(f"data.{field}:")


@pytest.mark.parametrize(("topic", "kind"), CURRENCY_FIELDS)
@pytest.mark.parametrize("currency", ["XYZ", "eur", "EURO", "", "€", 978, None])
def test_unknown_currencies_are_invalid(topic: str, kind: str, currency: Any) -> None:
    result = invalid(topic, with_data(topic, kind, currency=currency))
    assert result.error_class == "ValidationError"
    assert result.reason.startswith("data.currency:")


@pytest.mark.parametrize(("topic", "kind"), CASES)
def test_each_required_data_field_missing(topic: str, kind: str) -> None:
    for field in DATA[topic][kind]:
        result = invalid(topic, without(envelope(topic, kind), field, in_data=True))
        assert result.reason.startswith(f"data.{field}:")
        assert "required" in result.reason.lower()


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("LoanApplied", "term_months", 0),
        ("LoanApplied", "term_months", 481),
        ("LoanApplied", "term_months", "12"),
        ("LoanApplied", "term_months", True),
        ("LoanApplied", "customer_id", ""),
        ("LoanApplied", "customer_id", 7),
        ("LoanApplied", "partner_id", None),
        ("LoanApproved", "interest_rate_bps", -1),
        ("LoanApproved", "interest_rate_bps", "750"),
        ("LoanApproved", "interest_rate_bps", True),
        ("LoanApproved", "interest_rate_bps", 7.5),
        ("LoanRejected", "reason", ""),
        ("LoanRejected", "reason", 1),
        ("LoanCanceled", "reason", None),
    ],
)
def test_wrong_loan_data(kind: str, field: str, value: Any) -> None:
    result = invalid("loan-events", with_data("loan-events", kind, **{field: value}))
    assert result.error_class == "ValidationError"
    assert result.reason.startswith(f"data.{field}:")


def test_several_errors_are_listed_on_one_line() -> None:
    value = with_data("loan-events", "LoanApplied", amount_cents=-1, currency="XYZ", term_months=0)
    result = invalid("loan-events", value)
    for field in ("data.amount_cents", "data.currency", "data.term_months"):
        assert field in result.reason


# -- key --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "kind"), LOAN_CASES)
def test_key_must_equal_loan_id(topic: str, kind: str) -> None:
    result = invalid(topic, envelope(topic, kind), key=b"L2")
    assert result.error_class == "KeyMismatch"
    assert result.reason == "loan_id: 'L1' does not equal the key 'L2'"


def test_a_missing_key_is_a_mismatch() -> None:
    result = LOAN_EVENTS.decode(None, orjson.dumps(envelope("loan-events", "LoanRejected")))
    assert isinstance(result, Invalid) and result.error_class == "KeyMismatch"


def test_treasury_key_must_equal_partner_id() -> None:
    result = invalid("treasury-events", envelope("treasury-events", "CreditLineSet"), key=b"P2")
    assert result.error_class == "KeyMismatch"
    assert result.reason.startswith("partner_id:")


def test_a_key_that_is_not_utf8_is_a_mismatch_not_a_crash() -> None:
    result = invalid("loan-events", envelope("loan-events", "LoanRejected"), key=b"\xff")
    assert result.error_class == "KeyMismatch"


# -- never raises -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from(CASES), st.data())
def test_decode_never_raises_on_a_mangled_event(case: tuple[str, str], data: st.DataObject) -> None:
    topic, kind = case
    value = envelope(topic, kind)
    target = data.draw(st.sampled_from([value, value["data"]]), label="where")
    field = data.draw(st.sampled_from([*target, "extra"]), label="field")
    target[field] = data.draw(JSON, label="value")
    result = decode(topic, value, key=data.draw(st.sampled_from([b"L1", b"P1", b""]), label="key"))
    assert isinstance(result, Event | Invalid)
    if isinstance(result, Invalid):
        assert result.reason and "\n" not in result.reason
    else:  # PostgreSQL could not store it: the batch would fail at every redelivery
        assert not holds_nul(result.model_dump(mode="json"))


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from(ALL), st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_decode_never_raises_on_arbitrary_bytes(spec: TopicSpec, raw: bytes) -> None:
    result = spec.decode(b"L1", raw)
    assert isinstance(result, Event | Invalid)


def test_payment_and_payout_specs_are_loan_keyed() -> None:
    for spec in (PAYMENT_EVENTS, PAYOUT_EVENTS, LOAN_EVENTS):
        assert spec.key_field == "loan_id"
    assert TREASURY_EVENTS.key_field == "partner_id"


# -- what PostgreSQL cannot store -------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda v: v.update(event_id="e-\x00-1"),
        lambda v: v["data"].update(reason="no\x00pe"),
        lambda v: v["data"].update({"field\x00name": 1}),
    ],
    ids=["envelope field", "data field", "field name"],
)
def test_a_nul_character_anywhere_makes_an_event_invalid(change: Any) -> None:
    value = envelope("loan-events", "LoanRejected")
    change(value)
    assert invalid("loan-events", value) == Invalid("ValidationError", NUL_REASON)
    ingested = LOAN_EVENTS.validate(value, "L1")  # ingest validates parsed JSON
    assert ingested == Invalid("ValidationError", NUL_REASON)


def test_the_text_backslash_u0000_is_not_a_nul_character() -> None:
    value = envelope("loan-events", "LoanRejected")
    value["data"]["reason"] = "see \\u0000 in the docs"  # a backslash, then "u0000"
    assert b"\\u0000" in json.dumps(value).encode()
    assert isinstance(decode("loan-events", value), Event)


def test_key_text_replaces_invalid_utf8_and_nul() -> None:
    assert key_text(b"L-1") == "L-1"
    assert key_text(b"L\x00\xff1") == "L\ufffd\ufffd1"
    assert key_text(None) == ""
