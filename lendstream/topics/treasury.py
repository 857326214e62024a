"""`treasury-events` (key `partner_id`, no `loan_id`): partner credit lines (contract §3)."""

from __future__ import annotations

from typing import Literal

from lendstream.topics.envelope import Currency, Event, Identifier, NonNegativeCents, Strict

TOPIC = "treasury-events"
#: Internal: the payout saga's credit-line commands (key `partner_id`, co-partitioned with
#: `treasury-events`; wire format in `sagas.treasury`).
COMMANDS_TOPIC = "treasury-commands"


class CreditLineSetData(Strict):
    partner_id: Identifier
    currency: Currency
    limit_cents: NonNegativeCents


class CreditLineSet(Event):
    type: Literal["CreditLineSet"]
    data: CreditLineSetData

    @property
    def key(self) -> str:
        return self.data.partner_id


EVENTS = (CreditLineSet,)
