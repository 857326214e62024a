"""`payment-events` (key `loan_id`): repayments received (contract §3)."""

from __future__ import annotations

from typing import Literal

from lendstream.topics.envelope import Cents, Currency, Identifier, LoanEvent, Strict

TOPIC = "payment-events"


class RepaymentReceivedData(Strict):
    payment_id: Identifier
    amount_cents: Cents
    currency: Currency


class RepaymentReceived(LoanEvent):
    type: Literal["RepaymentReceived"]
    data: RepaymentReceivedData


EVENTS = (RepaymentReceived,)
