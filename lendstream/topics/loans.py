"""`loan-events` (key `loan_id`): what loan origination publishes (contract §3)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from lendstream.topics.envelope import Cents, Currency, Identifier, LoanEvent, Reason, Strict
from lendstream.topics.upcast import ModelUpcaster

TOPIC = "loan-events"


class LoanAppliedData(Strict):
    """schema_version 2: `amount_cents` is called `requested_amount_cents` (what the customer
    asked for, next to the approved amount)."""

    customer_id: Identifier
    partner_id: Identifier
    requested_amount_cents: Cents
    currency: Currency
    term_months: Annotated[int, Field(ge=1, le=480)]


class LoanAppliedDataV1(Strict):
    """schema_version 1 (frozen): still read, upcast to version 2."""

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
    LATEST_SCHEMA_VERSION: ClassVar[int] = 2

    type: Literal["LoanApplied"]
    data: LoanAppliedData


class LoanAppliedV1(LoanEvent):
    """LoanApplied as schema_version 1 wrote it; only the upcaster uses it."""

    type: Literal["LoanApplied"]
    data: LoanAppliedDataV1


def _loan_applied_v1_to_v2(old: LoanAppliedV1) -> dict[str, Any]:
    value = old.model_dump(mode="json", exclude_none=True)
    value["schema_version"] = 2
    value["data"]["requested_amount_cents"] = value["data"].pop("amount_cents")
    return value


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
UPCASTERS = {("LoanApplied", 1): ModelUpcaster(LoanAppliedV1, _loan_applied_v1_to_v2)}


__all__ = [
    "EVENTS",
    "TOPIC",
    "UPCASTERS",
    "LoanApplied",
    "LoanAppliedV1",
    "LoanApproved",
    "LoanCanceled",
    "LoanRejected",
]
