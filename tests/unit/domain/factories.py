"""Event and message factories for the pure domain tests.

Events are built through the real pydantic models (the same validation the codec runs), so a
factory can never produce an event the wire would not accept.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from lendstream.domain.loans import Loan, evolve
from lendstream.domain.sequencing import Keyed, Message, Outcome, Position, receive
from lendstream.topics import LOAN_KEYED, Event, Invalid

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, tzinfo=UTC)

#: event type -> (topic spec, model class)
_MODELS = {
    event_type.model_fields["type"].annotation.__args__[0]: (spec, event_type)  # type: ignore[union-attr]
    for spec in LOAN_KEYED
    for event_type in spec.events
}
_ids = itertools.count(1)


def at(minutes: float) -> datetime:
    """`T0` plus `minutes`: a readable event time."""
    return T0 + timedelta(minutes=minutes)


def topic_of(event_type: str) -> str:
    return _MODELS[event_type][0].name


def make(
    event_type: str,
    data: dict[str, Any],
    loan_id: str = "L1",
    occurred_at: datetime | None = None,
    event_id: str | None = None,
    **envelope: Any,
) -> Event:
    """One event of `event_type`, validated by its topic's codec (older schema versions are
    upcast, as on the wire); raises `ValueError` for an invalid one."""
    spec = _MODELS[event_type][0]
    when = occurred_at or T0
    value = {
        "event_id": event_id or f"e{next(_ids)}",
        "type": event_type,
        "occurred_at": when.isoformat(),
        "loan_id": loan_id,
        "data": data,
        **envelope,
    }
    event = spec.validate(value, loan_id)
    if isinstance(event, Invalid):
        raise ValueError(f"{event.error_class}: {event.reason}")
    return event


def applied(
    loan_id: str = "L1",
    *,
    amount: int = 100_000,
    currency: str = "EUR",
    customer: str = "C1",
    partner: str = "P1",
    term: int = 12,
    when: datetime = T0,
    event_id: str | None = None,
) -> Event:
    data = {
        "customer_id": customer,
        "partner_id": partner,
        "amount_cents": amount,
        "currency": currency,
        "term_months": term,
    }
    return make("LoanApplied", data, loan_id, when, event_id)


def approved(
    loan_id: str = "L1",
    *,
    amount: int = 100_000,
    bps: int = 1_000,
    when: datetime | None = None,
    event_id: str | None = None,
) -> Event:
    data = {"approved_amount_cents": amount, "interest_rate_bps": bps}
    return make("LoanApproved", data, loan_id, when or at(1), event_id)


def rejected(
    loan_id: str = "L1", *, reason: str = "affordability", when: datetime | None = None
) -> Event:
    return make("LoanRejected", {"reason": reason}, loan_id, when or at(1))


def canceled(
    loan_id: str = "L1", *, reason: str = "customer withdrew", when: datetime | None = None
) -> Event:
    return make("LoanCanceled", {"reason": reason}, loan_id, when or at(2))


def payout_id(loan_id: str) -> str:
    return f"payout:{loan_id}"


def payout_requested(
    loan_id: str = "L1",
    *,
    amount: int = 100_000,
    currency: str = "EUR",
    partner: str = "P1",
    when: datetime | None = None,
    event_id: str | None = None,
) -> Event:
    data = {
        "payout_id": payout_id(loan_id),
        "partner_id": partner,
        "amount_cents": amount,
        "currency": currency,
    }
    return make("PayoutRequested", data, loan_id, when or at(3), event_id)


def funds_reserved(
    loan_id: str = "L1", *, amount: int = 100_000, partner: str = "P1", when: datetime | None = None
) -> Event:
    data = {"payout_id": payout_id(loan_id), "partner_id": partner, "amount_cents": amount}
    return make("FundsReserved", data, loan_id, when or at(4))


def reservation_failed(
    loan_id: str = "L1",
    *,
    partner: str = "P1",
    reason: str = "credit line exhausted",
    when: datetime | None = None,
) -> Event:
    data = {"payout_id": payout_id(loan_id), "partner_id": partner, "reason": reason}
    return make("FundsReservationFailed", data, loan_id, when or at(4))


def payout_sent(loan_id: str = "L1", *, when: datetime | None = None) -> Event:
    return make("PayoutSent", {"payout_id": payout_id(loan_id)}, loan_id, when or at(5))


def payout_failed(
    loan_id: str = "L1", *, reason: str = "gateway said no", when: datetime | None = None
) -> Event:
    data = {"payout_id": payout_id(loan_id), "reason": reason}
    return make("PayoutFailed", data, loan_id, when or at(5))


def funds_released(
    loan_id: str = "L1", *, amount: int = 100_000, partner: str = "P1", when: datetime | None = None
) -> Event:
    data = {"payout_id": payout_id(loan_id), "partner_id": partner, "amount_cents": amount}
    return make("FundsReleased", data, loan_id, when or at(6))


def paid_out(
    loan_id: str = "L1",
    *,
    amount: int = 100_000,
    currency: str = "EUR",
    when: datetime | None = None,
    event_id: str | None = None,
) -> Event:
    data = {"payout_id": payout_id(loan_id), "amount_cents": amount, "currency": currency}
    return make("LoanPaidOut", data, loan_id, when or at(6), event_id)


def repayment(
    loan_id: str = "L1",
    *,
    amount: int = 10_000,
    currency: str = "EUR",
    when: datetime | None = None,
    event_id: str | None = None,
) -> Event:
    data = {"payment_id": f"pay-{next(_ids)}", "amount_cents": amount, "currency": currency}
    return make("RepaymentReceived", data, loan_id, when or at(60), event_id)


def fold(events: Iterable[Event], loan: Loan | None = None) -> Loan | None:
    """`evolve` over `events`, starting from `loan`."""
    for event in events:
        loan = evolve(loan, event)
    return loan


def paid_out_loan(amount: int = 100_000, bps: int = 1_000, loan_id: str = "L1") -> Loan:
    """A loan through applied, approved, payout requested and paid out."""
    loan = fold(
        [
            applied(loan_id, amount=amount),
            approved(loan_id, amount=amount, bps=bps),
            payout_requested(loan_id, amount=amount),
            paid_out(loan_id, amount=amount),
        ]
    )
    assert loan is not None
    return loan


# -- messages ------------------------------------------------------------------------------


class Feed:
    """Hands out messages with increasing offsets per topic, as a consumer would see them."""

    def __init__(self) -> None:
        self.offsets: dict[str, itertools.count[int]] = {}

    def message(
        self,
        decoded: Event | Invalid,
        *,
        topic: str | None = None,
        key: str = "L1",
        timestamp: float | None = None,
    ) -> Message:
        if topic is None:
            topic = topic_of(decoded.type) if isinstance(decoded, Event) else "loan-events"
        if isinstance(decoded, Event):
            key = decoded.key
        offset = next(self.offsets.setdefault(topic, itertools.count()))
        stamp = timestamp if timestamp is not None else T0.timestamp() + offset
        return Message(Position(topic, 0, offset), key, stamp, decoded)


def feed(
    keyed: Keyed[Loan], messages: Iterable[Message]
) -> tuple[Keyed[Loan], list[Outcome[Loan]]]:
    """`receive` every message in turn; all outcomes in order."""
    outcomes: list[Outcome[Loan]] = []
    for message in messages:
        keyed, more = receive(keyed, message, evolve, NOW)
        outcomes.extend(more)
    return keyed, outcomes


def lifecycle_versions() -> list[Loan]:
    """The row versions of four loans of two customers in two currencies, interleaved (each
    loan's own order kept): one repaying, one settled, one rejected, one paid out."""
    lifecycles = [
        [applied("L1"), approved("L1"), payout_requested("L1"), paid_out("L1"),
         repayment("L1"), repayment("L1", when=at(61))],
        [applied("L2"), approved("L2"), payout_requested("L2"), paid_out("L2"),
         repayment("L2", amount=110_000)],
        [applied("L3", customer="C2", currency="USD"), rejected("L3")],
        [applied("L4", currency="USD"), approved("L4"), payout_requested("L4", currency="USD"),
         paid_out("L4", currency="USD")],
    ]  # fmt: skip
    per_loan: list[list[Loan]] = []
    for events in lifecycles:
        loan: Loan | None = None
        versions = []
        for event in events:
            after = evolve(loan, event)
            if loan is None or after.version != loan.version:
                versions.append(after)
            loan = after
        per_loan.append(versions)
    interleaved = itertools.zip_longest(*per_loan)
    return [v for step in interleaved for v in step if v is not None]
