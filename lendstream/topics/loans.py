"""`loan-events` (key `loan_id`): what loan origination publishes (contract §3)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from lendstream.topics.envelope import Cents, Currency, Identifier, LoanEvent, Reason, Strict

TOPIC = "loan-events"


class LoanAppliedData(Strict):
    customer_id: Identifier
    partner_id: Identifier
    amount_cents: Cents
    currency: Currency
    term_months: Annotated[int, Field(ge=1, le=480)]


class LoanApprovedData(Strict):
    approved_amount_cents: Cents
    interest_rate_bps: Annotated[int, Field(ge=0, le=1_000_000)]


class ReasonData(Strict):
    reason: Reason


class LoanApplied(LoanEvent):
    type: Literal["LoanApplied"]
    data: LoanAppliedData


class LoanApproved(LoanEvent):
    type: Literal["LoanApproved"]
    data: LoanApprovedData


class LoanRejected(LoanEvent):
    type: Literal["LoanRejected"]
    data: ReasonData


class LoanCanceled(LoanEvent):
    type: Literal["LoanCanceled"]
    data: ReasonData


EVENTS = (LoanApplied, LoanApproved, LoanRejected, LoanCanceled)


__all__ = [
    "EVENTS",
    "TOPIC",
    "LoanApplied",
    "LoanApproved",
    "LoanCanceled",
    "LoanRejected",
]
