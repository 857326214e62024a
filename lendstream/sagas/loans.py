"""One message of the loan processor, with the payout saga riding along (pure).

The loan processor keeps, per loan, its sequencing state (`Keyed[Loan]`) and its payout saga
(`PayoutSaga`, or None before approval). `handle_message` folds one message into both:

- The saga follows its own step events (`payout-events`) as they *arrive*, whatever the loan's
  queue does with them: a loan whose early repayment waits for `LoanPaidOut` must not hold up
  the `FundsReserved` that leads there. The saga's handlers ignore what they moved past, so a
  redelivered or duplicate step changes nothing.
- The loan's upstream events reach the saga only once *applied* (in the loan's order):
  `LoanApproved` starts it, `LoanCanceled` compensates it, a repayment returns principal to the
  partner's credit line.
- A `LoanCanceled` after the gateway was called is a lifecycle violation: it is checked inside
  the fold, before the cancellation is applied, so it becomes a dead letter and the loan stays
  as it was.
- `GatewayAnswered` (the result of a gateway call, sent back on `loan-control`) and `FireTimers`
  drive the saga's calls, retries, re-sends and deadline.

The commands returned are carried out by the agent (see `sagas.payout` for what each means).
With `saga_enabled=False` no saga is started (payout events come from elsewhere); everything
else, including the saga's reactions to a saga that already exists, is unchanged.
"""

from __future__ import annotations

from datetime import datetime

from lendstream.domain.loans import Loan
from lendstream.domain.sequencing import Applied, Evolve, Keyed, Message, Outcome, Policy, handle
from lendstream.sagas import payout
from lendstream.sagas.payout import Command, GatewayResult, PayoutSaga, SagaPolicy
from lendstream.topics.control import FireTimers, GatewayAnswered
from lendstream.topics.envelope import Event
from lendstream.topics.loans import LoanApproved, LoanCanceled
from lendstream.topics.payments import RepaymentReceived
from lendstream.topics.payouts import EVENTS as PAYOUT_EVENTS

Folded = tuple[Keyed[Loan], PayoutSaga | None, list[Outcome[Loan]], list[Command]]


def handle_message(
    keyed: Keyed[Loan],
    saga: PayoutSaga | None,
    message: Message,
    evolve: Evolve[Loan],
    now: datetime,
    policy: Policy,
    saga_policy: SagaPolicy,
    saga_enabled: bool = True,
) -> Folded:
    """The loan's and its saga's next values after `message`, what happened to the loan's
    messages, and the saga's commands, in order."""
    decoded = message.decoded
    commands: list[Command] = []
    if isinstance(decoded, GatewayAnswered):
        if saga is not None:
            data = decoded.data
            result = GatewayResult(data.kind, data.reason)
            saga, commands = payout.on_gateway_result(saga, result, now, saga_policy, data.attempt)
        return keyed, saga, [], commands
    if isinstance(decoded, PAYOUT_EVENTS):
        saga, commands = payout.react(saga, decoded, now, saga_policy)
    elif isinstance(decoded, FireTimers) and saga is not None:
        saga, commands = payout.on_timer(saga, now, saga_policy)

    def guarded(loan: Loan | None, event: Event) -> Loan:
        if isinstance(event, LoanCanceled):
            payout.check_cancel(saga)
        return evolve(loan, event)

    keyed, outcomes = handle(keyed, message, guarded, now, policy)
    for outcome in outcomes:
        if isinstance(outcome, Applied):
            saga, more = _after_applied(saga, outcome, now, saga_policy, saga_enabled)
            commands.extend(more)
    return keyed, saga, outcomes, commands


def _after_applied(
    saga: PayoutSaga | None,
    outcome: Applied[Loan],
    now: datetime,
    saga_policy: SagaPolicy,
    saga_enabled: bool,
) -> tuple[PayoutSaga | None, list[Command]]:
    event = outcome.event
    if isinstance(event, LoanApproved):
        if saga is None and saga_enabled:
            return payout.start(outcome.after, event, now, saga_policy)
        return saga, []
    if isinstance(event, LoanCanceled):
        return payout.react(saga, event, now, saga_policy)
    if isinstance(event, RepaymentReceived):
        return saga, payout.on_repayment(saga, outcome.after, event)
    return saga, []


def next_due(keyed: Keyed[Loan], saga: PayoutSaga | None, policy: Policy) -> datetime | None:
    """When the loan needs a `FireTimers`: its queue's next timer or its saga's."""
    times = [keyed.next_due(policy), saga.next_due if saga is not None else None]
    return min((t for t in times if t is not None), default=None)
