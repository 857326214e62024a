"""Poison for the failure-handling tests: every kind of bad input, each on a key of its own, and
the valid-but-early events that must park and then apply (issue 3, acceptance 1).

Each `Poison` says where its message must end: `dead` with an error class, `released` (parked,
then applied when its dependency arrived), or nowhere (a duplicate changes nothing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from lendstream.simulation import Produced
from lendstream.topics.codec import key_text

Raw = tuple[str, bytes | None, bytes | None]


@dataclass(frozen=True)
class Poison:
    name: str
    message: Raw
    error_class: str  # what the dead letter must say ("" when it must not be dead)
    mentions: str = ""  # a word the reason must contain

    @property
    def key(self) -> str:
        """The key as the dead letter stores it."""
        return key_text(self.message[1])


def _applied(key: str) -> dict[str, Any]:
    return {
        "event_id": f"{key}-e", "type": "LoanApplied", "occurred_at": "2026-01-01T00:00:00Z",
        "loan_id": key, "data": {"customer_id": "C-poison", "partner_id": "P-poison",
                                 "amount_cents": 10_000, "currency": "EUR", "term_months": 12},
    }  # fmt: skip


def _mutated(key: str, change: Callable[[dict[str, Any]], None]) -> bytes:
    value = copy.deepcopy(_applied(key))
    change(value)
    return orjson.dumps(value)


def _without(*path: str) -> Callable[[dict[str, Any]], None]:
    def change(value: dict[str, Any]) -> None:
        target = value
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]

    return change


def _set(path: tuple[str, ...], new: Any) -> Callable[[dict[str, Any]], None]:
    def change(value: dict[str, Any]) -> None:
        target = value
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = new

    return change


INVALID: list[tuple[str, Callable[[str], bytes | None], str, str]] = [
    ("non-JSON bytes", lambda k: b"\xff\xfe{not json", "NotJson", "JSON"),
    ("a JSON array", lambda k: b"[1, 2, 3]", "NotAnObject", "list"),
    ("a JSON string", lambda k: b'"LoanApplied"', "NotAnObject", "str"),
    ("a JSON number", lambda k: b"42", "NotAnObject", "int"),
    ("no value (tombstone)", lambda k: None, "EmptyValue", "tombstone"),
    ("a 2 MiB value", lambda k: b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', "TooLarge", "limit"),
    ("unknown type", lambda k: _mutated(k, _set(("type",), "LoanExploded")), "UnknownType", "LoanExploded"),
    ("type missing", lambda k: _mutated(k, _without("type")), "UnknownType", "None"),
    ("key differs from loan_id", lambda k: _mutated(k, _set(("loan_id",), k + "-other")), "KeyMismatch", "loan_id"),
    ("unknown envelope field", lambda k: _mutated(k, _set(("surprise",), 1)), "ValidationError", "surprise"),
    ("unknown data field", lambda k: _mutated(k, _set(("data", "surprise"), 1)), "ValidationError", "surprise"),
    ("negative amount", lambda k: _mutated(k, _set(("data", "amount_cents"), -5)), "ValidationError", "amount_cents"),
    ("zero amount", lambda k: _mutated(k, _set(("data", "amount_cents"), 0)), "ValidationError", "amount_cents"),
    ("amount as a string", lambda k: _mutated(k, _set(("data", "amount_cents"), "100")), "ValidationError", "amount_cents"),
    ("term as a float", lambda k: _mutated(k, _set(("data", "term_months"), 12.5)), "ValidationError", "term_months"),
    ("occurred_at as a number", lambda k: _mutated(k, _set(("occurred_at",), 1700000000)), "ValidationError", "occurred_at"),
    ("occurred_at without offset", lambda k: _mutated(k, _set(("occurred_at",), "2026-01-01T00:00:00")), "ValidationError", "occurred_at"),
    ("unknown currency", lambda k: _mutated(k, _set(("data", "currency"), "XYZ")), "ValidationError", "currency"),
    ("schema_version from the future", lambda k: _mutated(k, _set(("schema_version",), 99)), "ValidationError", "schema_version"),
    ("data not an object", lambda k: _mutated(k, _set(("data",), [1])), "ValidationError", "data"),
    ("a NUL character in a string", lambda k: _mutated(k, _set(("data", "customer_id"), "C\x00")), "ValidationError", "NUL"),
    ("occurred_at before year 1 in UTC", lambda k: _mutated(k, _set(("occurred_at",), "0001-01-01T00:00:00+01:00")), "ValidationError", "occurred_at"),
] + [
    (f"{'.'.join(path)} missing", (lambda p: lambda k: _mutated(k, _without(*p)))(path), "ValidationError", path[-1])
    for path in [("event_id",), ("occurred_at",), ("loan_id",), ("data",), ("data", "customer_id"),
                 ("data", "partner_id"), ("data", "amount_cents"), ("data", "currency"),
                 ("data", "term_months")]
]  # fmt: skip


def invalid_poison(prefix: str) -> list[Poison]:
    """One message per kind of invalid input, each on its own key of `loan-events`."""
    out = []
    for n, (name, make, error_class, mentions) in enumerate(INVALID):
        key = f"{prefix}-inv-{n:02d}"
        out.append(Poison(name, ("loan-events", key.encode(), make(key)), error_class, mentions))
    nul_key = f"{prefix}-inv-nul\x00".encode()  # stored with U+FFFD: `text` cannot hold NUL
    out.append(
        Poison("a NUL character in the key", ("loan-events", nul_key, b"{"), "NotJson", "JSON")
    )
    return out


def _event(key: str, kind: str, data: dict[str, Any], n: int) -> dict[str, Any]:
    return {"event_id": f"{key}-{n}", "type": kind, "occurred_at": f"2026-01-01T00:0{n}:00Z",
            "loan_id": key, "data": data}  # fmt: skip


def violations(prefix: str) -> tuple[list[list[Produced]], list[Poison]]:
    """Loans whose last event breaks the lifecycle: (their valid prefixes, the violations)."""
    cases: list[tuple[str, list[tuple[str, str, dict[str, Any]]], tuple[str, str, dict[str, Any]], str]] = [
        ("approve a rejected loan", [("loan-events", "LoanRejected", {"reason": "no"})],
         ("loan-events", "LoanApproved", {"approved_amount_cents": 100, "interest_rate_bps": 0}), "rejected"),
        ("apply a known loan again", [],
         ("loan-events", "LoanApplied", _applied("x")["data"]), "known loan"),
        ("approve above the applied amount", [],
         ("loan-events", "LoanApproved", {"approved_amount_cents": 99_999, "interest_rate_bps": 0}), "above"),
        ("cancel a paid-out loan",
         [("loan-events", "LoanApproved", {"approved_amount_cents": 10_000, "interest_rate_bps": 0}),
          ("payout-events", "LoanPaidOut", {"payout_id": "p", "amount_cents": 10_000, "currency": "EUR"})],
         ("loan-events", "LoanCanceled", {"reason": "too late"}), "paid_out"),
        ("repay in another currency",
         [("loan-events", "LoanApproved", {"approved_amount_cents": 10_000, "interest_rate_bps": 0}),
          ("payout-events", "LoanPaidOut", {"payout_id": "p", "amount_cents": 10_000, "currency": "EUR"})],
         ("payment-events", "RepaymentReceived", {"payment_id": "r", "amount_cents": 5, "currency": "USD"}), "USD"),
    ]  # fmt: skip
    lifecycles, poison = [], []
    for n, (name, before, (topic, kind, data), mentions) in enumerate(cases):
        key = f"{prefix}-vio-{n}"
        events = [Produced("loan-events", key, _applied(key))]
        events += [Produced(t, key, _event(key, k, d, i + 1)) for i, (t, k, d) in enumerate(before)]
        lifecycles.append(events)
        bad = orjson.dumps(_event(key, kind, data, 9))
        poison.append(Poison(name, (topic, key.encode(), bad), "LifecycleViolation", mentions))
    return lifecycles, poison


def early_events(prefix: str) -> tuple[list[list[Produced]], list[Produced]]:
    """Loans whose events are produced before what they depend on: a repayment before the
    payout, and a loan whose every event comes before its `LoanApplied`. All must park, then
    apply once the dependency arrives; returns (lifecycles in causal order, stream order)."""
    approve = {"approved_amount_cents": 10_000, "interest_rate_bps": 100}
    paid = {"payout_id": "p", "amount_cents": 10_000, "currency": "EUR"}
    repay = {"payment_id": "r1", "amount_cents": 4_000, "currency": "EUR"}
    a, b = f"{prefix}-early-repayment", f"{prefix}-early-unknown"

    def life(key: str) -> list[Produced]:
        return [
            Produced("loan-events", key, _applied(key)),
            Produced("loan-events", key, _event(key, "LoanApproved", approve, 1)),
            Produced("payout-events", key, _event(key, "LoanPaidOut", paid, 2)),
            Produced("payment-events", key, _event(key, "RepaymentReceived", repay, 3)),
        ]

    la, lb = life(a), life(b)
    stream = [la[0], la[1], la[3], la[2], lb[3], lb[1], lb[2], lb[0]]
    return [la, lb], stream


def orphans(prefix: str, count: int) -> list[Produced]:
    """Repayments for loans that never exist: parked, then dead after the park deadline."""
    return [
        Produced("payment-events", f"{prefix}-orphan-{n}", _event(
            f"{prefix}-orphan-{n}", "RepaymentReceived",
            {"payment_id": f"o{n}", "amount_cents": 100, "currency": "EUR"}, 1,
        ))
        for n in range(count)
    ]  # fmt: skip
