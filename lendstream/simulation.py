"""Generated traffic: loan lifecycles from a seeded customer population (pure, deterministic).

`lifecycle` makes one loan's events in causal order; `interleave` merges many loans into one
stream the way independent upstream systems would publish them. Until the payout saga runs,
`with_payouts=True` also emits the payout events the saga would write.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from lendstream.domain.loans import total_due
from lendstream.topics import LOAN_EVENTS, PAYMENT_EVENTS, PAYOUT_EVENTS

CURRENCIES = ("EUR", "EUR", "EUR", "USD", "GBP")


@dataclass(frozen=True, slots=True)
class Produced:
    """One message to produce: topic, key and the JSON-ready envelope."""

    topic: str
    key: str
    value: dict[str, Any]


def _id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _envelope(
    rng: random.Random, loan_id: str, kind: str, at: datetime, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "event_id": _id(rng),
        "type": kind,
        "schema_version": 1,
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "loan_id": loan_id,
        "correlation_id": f"loan:{loan_id}",
        "data": data,
    }


def lifecycle(
    rng: random.Random,
    loan_id: str,
    customer_id: str,
    partner_id: str,
    start: datetime,
    with_payouts: bool = True,
    max_repayments: int = 24,
) -> list[Produced]:
    """One loan's events in causal order, ending in any of the lifecycle's end states."""
    currency = rng.choice(CURRENCIES)
    amount = rng.randrange(50_000, 5_000_000, 100)
    term = rng.choice((3, 6, 12, 24, 36))
    at = start
    out: list[Produced] = []

    def emit(topic: str, kind: str, data: dict[str, Any], minutes: float = 5) -> None:
        nonlocal at
        at = at + timedelta(minutes=minutes * (0.5 + rng.random()))
        out.append(Produced(topic, loan_id, _envelope(rng, loan_id, kind, at, data)))

    emit(LOAN_EVENTS.name, "LoanApplied", {
        "customer_id": customer_id, "partner_id": partner_id, "amount_cents": amount,
        "currency": currency, "term_months": term,
    })  # fmt: skip
    roll = rng.random()
    if roll < 0.15:
        emit(LOAN_EVENTS.name, "LoanRejected", {"reason": "affordability"})
        return out
    if roll < 0.20:
        emit(LOAN_EVENTS.name, "LoanCanceled", {"reason": "customer withdrew"})
        return out
    approved = amount if rng.random() < 0.7 else rng.randrange(100, amount + 1, 100)
    rate = rng.choice((0, 250, 499, 750, 1200))
    emit(
        LOAN_EVENTS.name,
        "LoanApproved",
        {"approved_amount_cents": approved, "interest_rate_bps": rate},
    )
    if roll < 0.25:
        emit(LOAN_EVENTS.name, "LoanCanceled", {"reason": "customer withdrew after approval"})
        return out
    if not with_payouts:
        return out
    payout_id = f"payout:{loan_id}"
    emit(PAYOUT_EVENTS.name, "PayoutRequested", {
        "payout_id": payout_id, "partner_id": partner_id, "amount_cents": approved,
        "currency": currency,
    }, minutes=0.1)  # fmt: skip
    if roll < 0.30:
        emit(
            PAYOUT_EVENTS.name,
            "PayoutFailed",
            {"payout_id": payout_id, "reason": "gateway said no"},
            1,
        )
        emit(PAYOUT_EVENTS.name, "FundsReleased", {
            "payout_id": payout_id, "partner_id": partner_id, "amount_cents": approved,
        }, minutes=0.1)  # fmt: skip
        return out
    emit(PAYOUT_EVENTS.name, "LoanPaidOut", {
        "payout_id": payout_id, "amount_cents": approved, "currency": currency,
    }, minutes=1)  # fmt: skip
    due = total_due(approved, rate)
    installment = max(-(-due // term), 1)
    repaid = 0
    for _ in range(min(term, max_repayments)):
        if repaid >= due:
            break
        pay = installment if rng.random() < 0.9 else installment + rng.randrange(0, installment)
        emit(PAYMENT_EVENTS.name, "RepaymentReceived", {
            "payment_id": _id(rng), "amount_cents": pay, "currency": currency,
        }, minutes=60 * 24 * 30)  # fmt: skip
        repaid += pay
    return out


def population(
    seed: int,
    loans: int,
    customers: int | None = None,
    partners: int = 5,
    with_payouts: bool = True,
    start: datetime | None = None,
    max_repayments: int = 24,
) -> list[list[Produced]]:
    """`loans` lifecycles for a seeded population (some customers have several loans)."""
    rng = random.Random(seed)
    customers = customers or max(loans * 2 // 3, 1)
    base = start or datetime(2026, 1, 1, tzinfo=UTC)
    result = []
    for n in range(loans):
        loan_id = f"L{seed}-{n:07d}"
        customer = f"C{rng.randrange(customers):07d}"
        partner = f"P{rng.randrange(partners):02d}"
        began = base + timedelta(minutes=rng.randrange(0, 60 * 24 * 30))
        result.append(
            lifecycle(rng, loan_id, customer, partner, began, with_payouts, max_repayments)
        )
    return result


def interleave(seed: int, lifecycles: list[list[Produced]]) -> Iterator[Produced]:
    """Merge lifecycles into one stream, keeping each loan's own order."""
    rng = random.Random(seed)
    cursors = [0] * len(lifecycles)
    live = [i for i, events in enumerate(lifecycles) if events]
    while live:
        pick = rng.randrange(len(live))
        i = live[pick]
        yield lifecycles[i][cursors[i]]
        cursors[i] += 1
        if cursors[i] == len(lifecycles[i]):
            live[pick] = live[-1]
            live.pop()
