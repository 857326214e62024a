"""`loan-control` (key `loan_id`): commands to the loan processor, written by lendstream itself.

Operators' dead-letter commands (`lendstream dlq replay|discard`), the timers of parked and
retrying events and of payout sagas, and the payout gateway's answers travel on this topic so that they take effect in the loan's own order, on the
worker that owns the loan's partition. The topic is co-partitioned with the loan-keyed topics;
producers address the partition of the queue they mean explicitly (the dead letter's partition),
so a command reaches the right queue even when an upstream producer partitioned by other means.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from lendstream.topics.codec import encode_event
from lendstream.topics.envelope import Identifier, LoanEvent, Reason, Strict

TOPIC = "loan-control"


class ReplayDeadLetterData(Strict):
    dead_letter_id: Identifier
    value: dict[str, Any] | None = None  # a corrected event to apply instead of the original


class ReplayDeadLetter(LoanEvent):
    """Apply a dead (or parked) message again — or its corrected value — in the loan's order."""

    type: Literal["ReplayDeadLetter"]
    data: ReplayDeadLetterData


class DiscardDeadLetterData(Strict):
    dead_letter_id: Identifier
    reason: Reason


class DiscardDeadLetter(LoanEvent):
    """Close a dead (or parked) message without applying it; what waited behind it follows."""

    type: Literal["DiscardDeadLetter"]
    data: DiscardDeadLetterData


class FireTimersData(Strict):
    pass


class FireTimers(LoanEvent):
    """Check the loan's queue for a park deadline passed or a retry due."""

    type: Literal["FireTimers"]
    data: FireTimersData


class GatewayAnsweredData(Strict):
    attempt: int = Field(ge=1)
    kind: Literal["sent", "permanent", "transient"]
    reason: Reason


class GatewayAnswered(LoanEvent):
    """What payout gateway call number `attempt` of the loan's saga came to (contract §5.2),
    fed back through the loan's own order by the worker that made the call."""

    type: Literal["GatewayAnswered"]
    data: GatewayAnsweredData


COMMANDS = (ReplayDeadLetter, DiscardDeadLetter, FireTimers, GatewayAnswered)
EVENTS = COMMANDS


def command(kind: str, loan_id: str, data: dict[str, Any], now: datetime) -> bytes:
    """The wire value of one command `kind` for `loan_id` (validated by its model first)."""
    model = {c.model_fields["type"].annotation.__args__[0]: c for c in COMMANDS}[kind]  # type: ignore[union-attr]
    event = model.model_validate(
        {
            "event_id": f"cmd-{uuid.uuid4()}",
            "type": kind,
            "occurred_at": now.isoformat(),
            "loan_id": loan_id,
            "data": data,
        }
    )
    return encode_event(event)
