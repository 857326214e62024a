"""The choreographed payout saga of contract §5, loan side, as pure logic.

One saga per approved loan, id `payout:<loan_id>`, which is also the `payout_id` every gateway
call carries as its `Idempotency-Key`: a loan is paid out at most once by construction.

The saga reacts to what the loan processor applies (it shares the loan's key and partitioning)
and to what the gateway answered; it returns its next state and *commands*, plain data an
agent carries out:

- `Emit(event)`: produce `event` on `payout-events` (key `event.loan_id`). Every event the saga
  emits has a deterministic `event_id` (`<payout_id>:<Type>`), so re-emitting after a crash is a
  duplicate downstream, never a second fact.
- `ToTreasury(command)`: send a credit-line command (`sagas.treasury`) to the partner-keyed
  treasury processor, which answers with `FundsReserved` / `FundsReservationFailed` /
  `FundsReleased` on `payout-events`.
- `CallGateway(...)`: make one gateway call (`lendstream.gateway`) and feed its result back
  through `on_gateway_result`.

Steps (`PayoutSaga.step`), in order: `requested` (PayoutRequested emitted) → `reserving`
(Reserve sent) → `sending` (gateway attempts) → `sent` (PayoutSent emitted) → `paying_out`
(LoanPaidOut emitted) → `paid_out` (completed). Exits: `releasing` (Release sent after a
permanent failure, a cancellation or the deadline) → `released` (compensated), and `failed`
(reservation refused: nothing to undo).

Time: `now` is processing time, passed in. `deadline_at = started + policy.deadline` is stored
in the state, so a restarted worker still compensates a saga that overran. Every non-terminal
step has a `wake_at`: when `on_timer` runs at or after it, the saga re-issues the step's
outgoing commands (idempotent: same event ids, same Idempotency-Key) — this is how a crash
between saving the state and sending a command heals — or, while the gateway is being tried,
makes the next attempt. The agent keeps a timer at `PayoutSaga.next_due`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from lendstream.domain.errors import LifecycleViolation
from lendstream.domain.loans import Loan
from lendstream.domain.sequencing import DEFAULT_POLICY, Policy
from lendstream.sagas.treasury import (
    Disburse,
    Release,
    Reserve,
    ReturnPrincipal,
    TreasuryCommand,
    payout_event,
)
from lendstream.topics.envelope import Event
from lendstream.topics.loans import LoanApproved, LoanCanceled
from lendstream.topics.payments import RepaymentReceived
from lendstream.topics.payouts import (
    FundsReleased,
    FundsReservationFailed,
    FundsReserved,
    LoanPaidOut,
    PayoutFailed,
    PayoutRequested,
    PayoutSent,
)

SAGA_TYPE = "payout"
DEADLINE_PASSED = "saga deadline passed"

Status = Literal["running", "completed", "compensated", "failed"]
Step = Literal[
    "requested", "reserving", "sending", "sent", "paying_out", "paid_out", "releasing",
    "released", "failed",
]  # fmt: skip


def payout_id_of(loan_id: str) -> str:
    """The one payout id (and saga id) of a loan."""
    return f"{SAGA_TYPE}:{loan_id}"


# -- inputs that are not events --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayResult:
    """What one gateway call came to (contract §5.2): `sent` (2xx or 409), `permanent` (another
    4xx) or `transient` (5xx, timeout, refused connection). `reason` says what happened."""

    kind: Literal["sent", "permanent", "transient"]
    reason: str = ""

    @property
    def sent(self) -> bool:
        return self.kind == "sent"


def classify_status(status: int) -> GatewayResult:
    """The result class of an HTTP status: 2xx or 409 sent, other 4xx permanent, else
    transient (5xx, and anything unexpected such as 1xx/3xx, which a retry may fix)."""
    if 200 <= status < 300 or status == 409:
        return GatewayResult("sent", f"HTTP {status}")
    if 400 <= status < 500:
        return GatewayResult("permanent", f"gateway answered HTTP {status}")
    return GatewayResult("transient", f"gateway answered HTTP {status}")


@dataclass(frozen=True, slots=True)
class SagaPolicy:
    """Timing: `retry.backoff` spaces gateway attempts and command re-sends (settings
    `LENDSTREAM_RETRY_BACKOFF`); the gateway is tried `retry.max_attempts` times at most;
    `deadline` is `LENDSTREAM_SAGA_DEADLINE` in seconds."""

    retry: Policy = DEFAULT_POLICY
    deadline: float = 900.0
    resend_after: float = 0.0  # at least this long before a step's commands are sent again
    answer_within: float = 0.0  # at least this long for a gateway answer before calling again

    def pause(self, attempt: int) -> timedelta:
        """Wait after the `attempt`-th try (1-based), the last tier repeating."""
        backoff = self.retry.backoff or (1.0,)
        return timedelta(seconds=backoff[min(attempt, len(backoff)) - 1])

    def resend_pause(self, attempt: int) -> timedelta:
        return max(self.pause(attempt), timedelta(seconds=self.resend_after))

    def answer_pause(self, attempt: int) -> timedelta:
        return max(self.pause(attempt), timedelta(seconds=self.answer_within))


DEFAULT_SAGA_POLICY = SagaPolicy()


# -- commands --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Emit:
    """Produce `event` on `payout-events`, key `event.loan_id`."""

    event: Event


@dataclass(frozen=True, slots=True)
class ToTreasury:
    """Send `command` to the treasury processor (key `command.partner_id`)."""

    command: TreasuryCommand


@dataclass(frozen=True, slots=True)
class CallGateway:
    """`POST {GATEWAY_URL}/payouts` with these fields as JSON and `Idempotency-Key: payout_id`;
    the answer goes to `on_gateway_result(saga, result, now, policy, attempt)`."""

    payout_id: str
    loan_id: str
    customer_id: str
    amount_cents: int
    currency: str
    attempt: int


Command = Emit | ToTreasury | CallGateway


# -- state -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PayoutSaga:
    """One loan's payout saga (a `saga_instances` row, plus what it needs to go on)."""

    loan_id: str
    customer_id: str
    partner_id: str
    amount_cents: int
    currency: str
    started_at: datetime
    updated_at: datetime
    deadline_at: datetime
    wake_at: datetime | None
    correlation_id: str
    step_cause: str  # event_id that caused the current step (causation of what it emits)
    status: Status = "running"
    step: Step = "requested"
    attempts: int = 0  # gateway calls made
    resends: int = 0  # re-issues of the current step's commands
    last_error: str | None = None
    cancel_reason: str | None = None  # canceled before sending; compensation pending
    failure: str | None = None  # PayoutFailed reason, once decided

    @property
    def saga_id(self) -> str:
        return payout_id_of(self.loan_id)

    @property
    def payout_id(self) -> str:
        return payout_id_of(self.loan_id)

    @property
    def saga_type(self) -> str:
        return SAGA_TYPE

    @property
    def finished(self) -> bool:
        return self.status != "running"

    @property
    def next_due(self) -> datetime | None:
        """When `on_timer` has something to do (None: never again)."""
        return None if self.finished else self.wake_at

    @property
    def gateway_touched(self) -> bool:
        """A gateway call was made: the payout may have gone out, so cancelling is over."""
        return self.attempts > 0


# -- entry points ----------------------------------------------------------------------------


def start(
    loan: Loan, approved: LoanApproved, now: datetime, policy: SagaPolicy = DEFAULT_SAGA_POLICY
) -> tuple[PayoutSaga, list[Command]]:
    """The saga of `loan` (the loan state *after* `approved` was applied): emits
    `PayoutRequested` for the approved amount. Call it once, when `LoanApproved` is applied;
    calling it again for the same approval yields the same event (same `event_id`)."""
    amount = approved.data.approved_amount_cents
    saga = PayoutSaga(
        loan_id=loan.loan_id,
        customer_id=loan.customer_id,
        partner_id=loan.partner_id,
        amount_cents=amount,
        currency=loan.currency,
        started_at=now,
        updated_at=now,
        deadline_at=now + timedelta(seconds=policy.deadline),
        wake_at=now + policy.resend_pause(1),
        correlation_id=approved.correlation_id or approved.event_id,
        step_cause=approved.event_id,
    )
    return saga, _step_commands(saga, approved.event_id)


def react(
    saga: PayoutSaga | None,
    event: Event,
    now: datetime,
    policy: SagaPolicy = DEFAULT_SAGA_POLICY,
) -> tuple[PayoutSaga | None, list[Command]]:
    """The saga after the loan processor applied `event` (any loan-keyed event).

    Events that are not the saga's business, or that arrive for a loan without a saga, change
    nothing. Raises `LifecycleViolation` for a `LoanCanceled` once the gateway has been called
    (the payout may have gone out; the caller must make the cancellation a dead letter, so it
    has to run this *before* applying the cancellation to the loan). Re-applying an event the
    saga already moved past returns the same state and no commands.
    """
    if saga is None:
        return None, []
    handler = _HANDLERS.get(type(event))
    if handler is None:
        return saga, []
    return handler(saga, event, now, policy)


def on_repayment(saga: PayoutSaga | None, loan: Loan, event: Event) -> list[Command]:
    """What an applied `RepaymentReceived` tells the partner's line: the loan's principal
    repaid so far (`loan` is the state after the repayment). Nothing without a saga."""
    if saga is None or not isinstance(event, RepaymentReceived):
        return []
    returned = ReturnPrincipal(saga.partner_id, saga.payout_id, loan.principal_repaid_cents)
    return [ToTreasury(returned)]


def check_cancel(saga: PayoutSaga | None) -> None:
    """Raise `LifecycleViolation` if the loan may no longer be canceled (contract §5.3: only
    before sending; here: before the first gateway call, which may already have paid)."""
    if saga is not None and saga.gateway_touched:
        raise LifecycleViolation("LoanCanceled after the payout was sent to the gateway")


def on_gateway_result(
    saga: PayoutSaga,
    result: GatewayResult,
    now: datetime,
    policy: SagaPolicy = DEFAULT_SAGA_POLICY,
    attempt: int | None = None,
) -> tuple[PayoutSaga, list[Command]]:
    """The saga after gateway call number `attempt` (default: the latest) answered `result`.

    - sent → emit `PayoutSent`.
    - permanent → emit `PayoutFailed` with the gateway's reason and release the funds.
    - transient → wait for the next backoff tier (`wake_at`), then `on_timer` calls again;
      after `max_attempts` calls, or if the next call would come after the deadline, fail
      permanently as above.
    A result for an older attempt, or for a saga no longer sending, changes nothing: the agent
    feeds results back in order for its key, so this only happens for a redelivered result.
    """
    if result.sent and saga.step == "sending":
        return _advance(saga, now, policy, "sent")
    if saga.step != "sending" or (attempt is not None and attempt != saga.attempts):
        return saga, []
    if result.kind == "permanent":
        return _fail(saga, now, policy, result.reason)
    next_try = now + policy.pause(saga.attempts)
    if saga.attempts >= policy.retry.max_attempts:
        return _fail(saga, now, policy, f"gave up after {saga.attempts} attempts: {result.reason}")
    if next_try >= saga.deadline_at:
        return _fail(saga, now, policy, f"{DEADLINE_PASSED}: {result.reason}")
    return replace(saga, updated_at=now, wake_at=next_try, last_error=result.reason), []


def on_timer(
    saga: PayoutSaga, now: datetime, policy: SagaPolicy = DEFAULT_SAGA_POLICY
) -> tuple[PayoutSaga, list[Command]]:
    """What time does: nothing before `wake_at`. Then, while sending, the next gateway attempt
    (or the permanent failure when the deadline has passed); in any other running step the
    step's commands are re-issued (idempotently) and the next wake-up set by the backoff.
    A saga past its deadline before the gateway was called is failed as soon as its
    reservation is known (reserved funds are released)."""
    if saga.wake_at is None or saga.finished or now < saga.wake_at:
        return saga, []
    if saga.step == "sending":
        if now >= saga.deadline_at:
            return _fail(saga, now, policy, _with_last_error(saga, DEADLINE_PASSED))
        if saga.attempts >= policy.retry.max_attempts:
            reason = f"gave up after {saga.attempts} attempts"
            return _fail(saga, now, policy, _with_last_error(saga, reason))
        return _call(saga, now, policy)
    resends = saga.resends + 1
    saga = replace(saga, resends=resends, wake_at=now + policy.resend_pause(resends + 1))
    return saga, _step_commands(saga, saga.step_cause)


def _with_last_error(saga: PayoutSaga, reason: str) -> str:
    return f"{reason}: {saga.last_error}" if saga.last_error else reason


# -- handlers --------------------------------------------------------------------------------

Reaction = tuple[PayoutSaga, list[Command]]


def _payout_requested(
    saga: PayoutSaga, event: Event, now: datetime, policy: SagaPolicy
) -> Reaction:
    if saga.step != "requested":
        return saga, []
    if saga.cancel_reason is not None:  # canceled before reserving: nothing to undo
        return _finish(saga, now, "released", "compensated"), []
    return _advance(saga, now, policy, "reserving", cause=event.event_id)


def _funds_reserved(saga: PayoutSaga, event: Event, now: datetime, policy: SagaPolicy) -> Reaction:
    if saga.step not in ("requested", "reserving"):
        return saga, []
    if saga.cancel_reason is not None:
        return _advance(saga, now, policy, "releasing", cause=event.event_id)
    if now >= saga.deadline_at:
        return _fail(saga, now, policy, DEADLINE_PASSED, cause=event.event_id)
    return _call(replace(saga, step="sending"), now, policy)


def _reservation_failed(
    saga: PayoutSaga, event: Event, now: datetime, policy: SagaPolicy
) -> Reaction:
    assert isinstance(event, FundsReservationFailed)
    if saga.step not in ("requested", "reserving"):
        return saga, []
    if saga.cancel_reason is not None:  # canceled, and nothing was reserved: done
        return _finish(saga, now, "released", "compensated"), []
    reason = f"funds reservation failed: {event.data.reason}"
    failed = replace(saga, failure=reason, last_error=reason)
    return _finish(failed, now, "failed", "failed"), [_emit_failed(failed, now, event.event_id)]


def _payout_sent(saga: PayoutSaga, event: Event, now: datetime, policy: SagaPolicy) -> Reaction:
    if saga.step != "sent":
        return saga, []
    return _advance(saga, now, policy, "paying_out", cause=event.event_id)


def _loan_paid_out(saga: PayoutSaga, event: Event, now: datetime, policy: SagaPolicy) -> Reaction:
    """Completed: the reservation becomes paid-out principal on the partner's line."""
    if saga.step == "paid_out":
        return saga, []
    disburse = Disburse(saga.partner_id, saga.payout_id)
    return _finish(saga, now, "paid_out", "completed"), [ToTreasury(disburse)]


def _funds_released(saga: PayoutSaga, event: Event, now: datetime, policy: SagaPolicy) -> Reaction:
    if saga.step != "releasing":
        return saga, []
    return _finish(saga, now, "released", "compensated"), []


def _canceled(saga: PayoutSaga, event: Event, now: datetime, policy: SagaPolicy) -> Reaction:
    """Cancellation before the gateway was called: compensate (release once reserved)."""
    assert isinstance(event, LoanCanceled)
    check_cancel(saga)
    if saga.finished or saga.cancel_reason is not None or saga.step == "releasing":
        return saga, []
    # PayoutRequested / the reservation's answer decides what to undo (see their handlers)
    return replace(saga, cancel_reason=event.data.reason, updated_at=now), []


_HANDLERS = {
    PayoutRequested: _payout_requested,
    FundsReserved: _funds_reserved,
    FundsReservationFailed: _reservation_failed,
    PayoutSent: _payout_sent,
    LoanPaidOut: _loan_paid_out,
    FundsReleased: _funds_released,
    LoanCanceled: _canceled,
}


# -- transitions -----------------------------------------------------------------------------


def _advance(
    saga: PayoutSaga,
    now: datetime,
    policy: SagaPolicy,
    step: Step,
    cause: str | None = None,
) -> Reaction:
    """Enter `step` and issue its commands, with a fresh wake-up for re-sending them."""
    moved = replace(
        saga, step=step, updated_at=now, resends=0, wake_at=now + policy.resend_pause(1),
        step_cause=cause or saga.step_cause,
    )  # fmt: skip
    return moved, _step_commands(moved, moved.step_cause)


def _call(saga: PayoutSaga, now: datetime, policy: SagaPolicy) -> Reaction:
    """Make the next gateway attempt; the wake-up is a watchdog for a lost answer."""
    attempt = saga.attempts + 1
    wake_at = now + policy.answer_pause(attempt)
    calling = replace(saga, attempts=attempt, updated_at=now, wake_at=wake_at)
    return calling, [_gateway_call(calling)]


def _gateway_call(saga: PayoutSaga) -> CallGateway:
    return CallGateway(
        saga.payout_id, saga.loan_id, saga.customer_id, saga.amount_cents, saga.currency,
        saga.attempts,
    )  # fmt: skip


def _fail(
    saga: PayoutSaga, now: datetime, policy: SagaPolicy, reason: str, cause: str | None = None
) -> Reaction:
    """Permanent failure while funds are reserved: `PayoutFailed`, then release them."""
    failed = replace(saga, failure=reason, last_error=reason)
    moved, commands = _advance(failed, now, policy, "releasing", cause)
    return moved, commands


def _finish(saga: PayoutSaga, now: datetime, step: Step, status: Status) -> PayoutSaga:
    return replace(saga, step=step, status=status, updated_at=now, wake_at=None)


def _step_commands(saga: PayoutSaga, cause: str) -> list[Command]:
    """What a step sends on entry, and again on each re-send (same ids every time)."""
    now = saga.updated_at
    if saga.step == "requested":
        return [_emit(saga, PayoutRequested, now, cause, partner_id=saga.partner_id,
                      amount_cents=saga.amount_cents, currency=saga.currency)]  # fmt: skip
    if saga.step == "reserving":
        reserve = Reserve(
            saga.partner_id, saga.payout_id, saga.loan_id, saga.amount_cents, saga.currency,
            saga.correlation_id, cause,
        )  # fmt: skip
        return [ToTreasury(reserve)]
    if saga.step == "sending":
        return [_gateway_call(saga)]
    if saga.step == "sent":
        return [_emit(saga, PayoutSent, now, cause)]
    if saga.step == "paying_out":
        return [_emit(saga, LoanPaidOut, now, cause, amount_cents=saga.amount_cents,
                      currency=saga.currency)]  # fmt: skip
    if saga.step == "releasing":
        release = Release(saga.partner_id, saga.payout_id, saga.loan_id, saga.correlation_id, cause)
        failed = [_emit_failed(saga, now, cause)] if saga.failure is not None else []
        return [*failed, ToTreasury(release)]
    return []


def _emit_failed(saga: PayoutSaga, now: datetime, cause: str) -> Emit:
    return _emit(saga, PayoutFailed, now, cause, reason=saga.failure or "payout failed")


def _emit(saga: PayoutSaga, model: type[Event], now: datetime, cause: str, **data: object) -> Emit:
    return Emit(
        payout_event(model, saga.payout_id, saga.loan_id, now, data, saga.correlation_id, cause)
    )
