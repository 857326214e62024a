"""Partner credit lines (contract §5.1), keyed by `partner_id`, as pure logic.

`available = limit - in_use` and `in_use = reserved + paid-out principal - principal repaid`.
Invariant after every input: `0 ≤ in_use`, and a reservation never makes `in_use > limit`
(lowering the limit below `in_use` is allowed; it only stops new reservations).

Inputs, all carrying `partner_id` (the key):
- `CreditLineSet` (the `treasury-events` event): replaces limit and currency; a currency change
  while `in_use > 0` raises `LifecycleViolation` (a dead letter).
- `Reserve` / `Release` (from the payout saga), `Disburse` (when `LoanPaidOut` is applied),
  `ReturnPrincipal` (when a repayment is applied): plain commands the loan side sends.

`react(line, input, now)` returns the next line and the events to emit on `payout-events`
(key `loan_id`): `FundsReserved`, `FundsReservationFailed`, `FundsReleased`. Each payout has
one hold in the line, so every command is idempotent: a repeated `Reserve` or `Release` emits
the same event again (same `event_id` `<payout_id>:<Type>`, a duplicate downstream) without
touching the amounts — which is how a crash between saving the line and emitting heals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Literal

import orjson

from lendstream.domain.errors import LifecycleViolation
from lendstream.topics.envelope import Event
from lendstream.topics.payouts import FundsReleased, FundsReservationFailed, FundsReserved
from lendstream.topics.treasury import CreditLineSet

CURRENCY_MISMATCH = "currency mismatch"
NO_CREDIT_LINE = "no credit line"
INSUFFICIENT_CREDIT = "insufficient credit"


@dataclass(frozen=True, slots=True)
class Reserve:
    partner_id: str
    payout_id: str
    loan_id: str
    amount_cents: int
    currency: str
    correlation_id: str | None = None
    causation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Release:
    """Undo a reservation (compensation). Releasing a payout never reserved emits nothing."""

    partner_id: str
    payout_id: str
    loan_id: str
    correlation_id: str | None = None
    causation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Disburse:
    """The reserved amount was paid out: it stays in use as outstanding principal."""

    partner_id: str
    payout_id: str


@dataclass(frozen=True, slots=True)
class ReturnPrincipal:
    """The loan's principal repaid *so far* (cumulative, so a redelivery changes nothing)."""

    partner_id: str
    payout_id: str
    principal_repaid_cents: int


TreasuryCommand = Reserve | Release | Disburse | ReturnPrincipal
TreasuryInput = CreditLineSet | TreasuryCommand

HoldState = Literal["reserved", "refused", "released", "disbursed"]


@dataclass(frozen=True, slots=True)
class Hold:
    """What the line knows of one payout; `amount_cents` counts in `in_use` while `reserved`,
    and `amount_cents - returned_cents` while `disbursed`."""

    loan_id: str
    amount_cents: int
    state: HoldState
    reason: str | None = None  # why it was refused
    returned_cents: int = 0

    @property
    def in_use_cents(self) -> int:
        if self.state == "reserved":
            return self.amount_cents
        if self.state == "disbursed":
            return self.amount_cents - self.returned_cents
        return 0


@dataclass(frozen=True, slots=True)
class CreditLine:
    """A partner's line (a `partner_credit` row). `currency` is None until a `CreditLineSet`.
    Fully repaid holds are dropped, so `holds` holds open and compensated payouts only."""

    partner_id: str
    currency: str | None = None
    limit_cents: int = 0
    reserved_cents: int = 0
    outstanding_cents: int = 0  # paid-out principal - principal repaid
    holds: tuple[tuple[str, Hold], ...] = ()  # payout_id → hold, in arrival order
    updated_at: datetime | None = None

    @property
    def in_use_cents(self) -> int:
        return self.reserved_cents + self.outstanding_cents

    @property
    def available_cents(self) -> int:
        return self.limit_cents - self.in_use_cents

    def hold(self, payout_id: str) -> Hold | None:
        return dict(self.holds).get(payout_id)

    def with_hold(self, payout_id: str, hold: Hold | None) -> CreditLine:
        """The line with `payout_id`'s hold replaced (None: dropped), totals recomputed."""
        holds = dict(self.holds)
        old = holds.pop(payout_id, None)
        if hold is not None:
            holds[payout_id] = hold
        return replace(
            self,
            holds=tuple(holds.items()),
            reserved_cents=self.reserved_cents
            + _in_use(hold, "reserved")
            - _in_use(old, "reserved"),
            outstanding_cents=(
                self.outstanding_cents + _in_use(hold, "disbursed") - _in_use(old, "disbursed")
            ),
        )


def _in_use(hold: Hold | None, state: HoldState) -> int:
    return hold.in_use_cents if hold is not None and hold.state == state else 0


def react(
    line: CreditLine | None, message: TreasuryInput, now: datetime
) -> tuple[CreditLine, list[Event]]:
    """The line after `message`, and the events to emit on `payout-events`. Raises
    `LifecycleViolation` for a currency change while funds are in use."""
    partner_id = (
        message.data.partner_id if isinstance(message, CreditLineSet) else message.partner_id
    )
    current = line if line is not None else CreditLine(partner_id)
    if isinstance(message, CreditLineSet):
        return _set(current, message), []
    if isinstance(message, Reserve):
        nxt, events = _reserve(current, message, now)
    elif isinstance(message, Release):
        nxt, events = _release(current, message, now)
    elif isinstance(message, Disburse):
        nxt, events = _disburse(current, message), []
    else:
        nxt, events = _return(current, message), []
    return replace(nxt, updated_at=now) if nxt is not current else nxt, events


def _set(line: CreditLine, event: CreditLineSet) -> CreditLine:
    data = event.data
    if line.currency not in (None, data.currency) and line.in_use_cents > 0:
        raise LifecycleViolation(
            f"credit line of {line.partner_id} changes currency {line.currency} → "
            f"{data.currency} while {line.in_use_cents} cents are in use"
        )
    return replace(line, currency=data.currency, limit_cents=data.limit_cents,
                   updated_at=event.occurred_at)  # fmt: skip


def refusal(line: CreditLine, currency: str, amount_cents: int) -> str | None:
    """Why `amount_cents` in `currency` cannot be reserved on `line` (None: it can)."""
    if line.currency is None:
        return NO_CREDIT_LINE
    if currency != line.currency:
        return CURRENCY_MISMATCH
    if amount_cents > line.available_cents:
        return f"{INSUFFICIENT_CREDIT}: {line.available_cents} cents available"
    return None


def _reserve(line: CreditLine, command: Reserve, now: datetime) -> tuple[CreditLine, list[Event]]:
    hold = line.hold(command.payout_id)
    if hold is None:
        reason = refusal(line, command.currency, command.amount_cents)
        state: HoldState = "refused" if reason else "reserved"
        hold = Hold(command.loan_id, command.amount_cents, state, reason)
        line = line.with_hold(command.payout_id, hold)
    if hold.state == "refused":
        refused = {"partner_id": line.partner_id, "reason": hold.reason}
        return line, [_answer(FundsReservationFailed, command, now, refused)]
    reserved = {"partner_id": line.partner_id, "amount_cents": hold.amount_cents}
    return line, [_answer(FundsReserved, command, now, reserved)]


def _release(line: CreditLine, command: Release, now: datetime) -> tuple[CreditLine, list[Event]]:
    hold = line.hold(command.payout_id)
    if hold is None or hold.state not in ("reserved", "released"):
        return line, []  # never reserved, refused, or already paid out: nothing to release
    if hold.state == "reserved":
        line = line.with_hold(command.payout_id, replace(hold, state="released"))
    data = {"partner_id": line.partner_id, "amount_cents": hold.amount_cents}
    return line, [_answer(FundsReleased, command, now, data)]


def _disburse(line: CreditLine, command: Disburse) -> CreditLine:
    hold = line.hold(command.payout_id)
    if hold is None or hold.state != "reserved":
        return line
    return line.with_hold(command.payout_id, replace(hold, state="disbursed"))


def _return(line: CreditLine, command: ReturnPrincipal) -> CreditLine:
    """A repayment implies the payout: a hold still reserved (its `Disburse` lost) is
    disbursed first."""
    hold = line.hold(command.payout_id)
    if hold is not None and hold.state == "reserved":
        hold = replace(hold, state="disbursed")
        line = line.with_hold(command.payout_id, hold)
    if hold is None or hold.state != "disbursed":
        return line
    returned = min(max(hold.returned_cents, command.principal_repaid_cents), hold.amount_cents)
    if returned == hold.returned_cents:
        return line
    if returned == hold.amount_cents:
        return line.with_hold(command.payout_id, None)
    return line.with_hold(command.payout_id, replace(hold, returned_cents=returned))


def _answer(
    model: type[Event], command: Reserve | Release, now: datetime, data: Mapping[str, object]
) -> Event:
    return payout_event(
        model, command.payout_id, command.loan_id, now, data,
        command.correlation_id, command.causation_id,
    )  # fmt: skip


def payout_event(
    model: type[Event],
    payout_id: str,
    loan_id: str,
    now: datetime,
    data: Mapping[str, object],
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> Event:
    """The payout's one event of type `model`: `event_id` is `<payout_id>:<Type>`, so emitting
    it again is a duplicate, never a second fact. `data` gets `payout_id` added."""
    type_name = model.__name__
    return model.model_validate(
        {
            "event_id": f"{payout_id}:{type_name}",
            "type": type_name,
            "occurred_at": now,
            "loan_id": loan_id,
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "data": {"payout_id": payout_id, **data},
        }
    )


# -- wire format of the commands (`treasury-commands`, key `partner_id`) ------------------------

_COMMAND_TYPES: dict[str, type[TreasuryCommand]] = {
    cls.__name__: cls for cls in (Reserve, Release, Disburse, ReturnPrincipal)
}


def encode_command(command: TreasuryCommand, reply_partition: int | None = None) -> bytes:
    """The JSON value of `command` on `treasury-commands`; `reply_partition` is the partition
    of the loan's `payout-events`, where the answer goes."""
    body = {"kind": type(command).__name__, "reply_partition": reply_partition}
    body.update(asdict(command))
    return orjson.dumps(body)


def decode_command(raw: bytes) -> tuple[TreasuryCommand, int | None]:
    """`(command, reply partition)`; raises `ValueError` for anything else."""
    try:
        body = orjson.loads(raw)
        kind = _COMMAND_TYPES[body.pop("kind")]
        reply_partition = body.pop("reply_partition", None)
        return kind(**body), reply_partition
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a treasury command: {exc!r}") from exc
