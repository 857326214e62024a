"""`payout-events` (key `loan_id`): the payout saga's steps, written by lendstream (§3, §5)."""

from __future__ import annotations

from typing import Literal

from lendstream.topics.envelope import Cents, Currency, Identifier, LoanEvent, Reason, Strict

TOPIC = "payout-events"


class PayoutRequestedData(Strict):
    payout_id: Identifier
    partner_id: Identifier
    amount_cents: Cents
    currency: Currency


class FundsReservedData(Strict):
    payout_id: Identifier
    partner_id: Identifier
    amount_cents: Cents


class FundsReservationFailedData(Strict):
    payout_id: Identifier
    partner_id: Identifier
    reason: Reason


class PayoutSentData(Strict):
    payout_id: Identifier


class PayoutFailedData(Strict):
    payout_id: Identifier
    reason: Reason


class FundsReleasedData(Strict):
    payout_id: Identifier
    partner_id: Identifier
    amount_cents: Cents


class LoanPaidOutData(Strict):
    payout_id: Identifier
    amount_cents: Cents
    currency: Currency


class PayoutRequested(LoanEvent):
    type: Literal["PayoutRequested"]
    data: PayoutRequestedData


class FundsReserved(LoanEvent):
    type: Literal["FundsReserved"]
    data: FundsReservedData


class FundsReservationFailed(LoanEvent):
    type: Literal["FundsReservationFailed"]
    data: FundsReservationFailedData


class PayoutSent(LoanEvent):
    type: Literal["PayoutSent"]
    data: PayoutSentData


class PayoutFailed(LoanEvent):
    type: Literal["PayoutFailed"]
    data: PayoutFailedData


class FundsReleased(LoanEvent):
    type: Literal["FundsReleased"]
    data: FundsReleasedData


class LoanPaidOut(LoanEvent):
    type: Literal["LoanPaidOut"]
    data: LoanPaidOutData


EVENTS = (
    PayoutRequested,
    FundsReserved,
    FundsReservationFailed,
    PayoutSent,
    PayoutFailed,
    FundsReleased,
    LoanPaidOut,
)
