"""A pure, in-memory choreography for the saga tests: the loan processor, the treasury
processor and a scripted gateway, wired the way the agents will be (commands carried out in
order, events applied through the real loan aggregate). No I/O, no clock: `now` moves by hand.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from lendstream.domain.errors import DependencyMissing, LifecycleViolation
from lendstream.domain.loans import Loan, evolve
from lendstream.sagas import fanout, payout, treasury
from lendstream.sagas.payout import (
    CallGateway,
    Command,
    Emit,
    GatewayResult,
    PayoutSaga,
    SagaPolicy,
    ToTreasury,
)
from lendstream.topics.envelope import Event
from lendstream.topics.loans import LoanApproved, LoanCanceled
from lendstream.topics.treasury import CreditLineSet
from tests.unit.domain.factories import T0, make

Gateway = Callable[[CallGateway], GatewayResult]


def always_sent(call: CallGateway) -> GatewayResult:
    return GatewayResult("sent", "HTTP 201")


@dataclass
class World:
    policy: SagaPolicy = field(default_factory=SagaPolicy)
    gateway: Gateway = always_sent
    now: datetime = T0
    loans: dict[str, Loan] = field(default_factory=dict)
    sagas: dict[str, PayoutSaga] = field(default_factory=dict)
    lines: dict[str, treasury.CreditLine] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)
    payout_events: list[Event] = field(default_factory=list)
    calls: list[CallGateway] = field(default_factory=list)
    dead: list[tuple[Event, str]] = field(default_factory=list)
    ledger: list[fanout.LedgerEntry] = field(default_factory=list)
    notifications: list[fanout.Notification] = field(default_factory=list)
    daily: list[fanout.DailyPayout] = field(default_factory=list)
    checks: list[Callable[[World], None]] = field(default_factory=list)
    outbox: deque[Command] = field(default_factory=deque)
    reservations: list[tuple[int, int]] = field(default_factory=list)  # (in_use, limit) after

    # -- inputs --------------------------------------------------------------------------

    def set_line(
        self, partner: str, currency: str, limit: int, event_id: str | None = None
    ) -> None:
        event = CreditLineSet.model_validate(
            {
                "event_id": event_id or f"cl-{partner}-{len(self.applied)}",
                "type": "CreditLineSet",
                "occurred_at": self.now,
                "data": {"partner_id": partner, "currency": currency, "limit_cents": limit},
            }
        )
        try:
            self.lines[partner], _ = treasury.react(self.lines.get(partner), event, self.now)
        except LifecycleViolation as exc:
            self.dead.append((event, str(exc)))
        self._check()

    def loan(self, event_type: str, data: dict, loan_id: str = "L1", **kw: object) -> None:
        """An upstream event for `loan_id`, then everything it sets going."""
        self.apply(make(event_type, data, loan_id, self.now, **kw))  # type: ignore[arg-type]
        self.run()

    def open_loan(
        self, loan_id: str = "L1", amount: int = 100_000, currency: str = "EUR",
        partner: str = "P1", rate_bps: int = 1000,
    ) -> None:  # fmt: skip
        applied = {"customer_id": "C1", "partner_id": partner, "amount_cents": amount,
                   "currency": currency, "term_months": 12}  # fmt: skip
        self.loan("LoanApplied", applied, loan_id)
        approved = {"approved_amount_cents": amount, "interest_rate_bps": rate_bps}
        self.loan("LoanApproved", approved, loan_id)

    def tick(self, seconds: float) -> None:
        """Let time pass and fire every due saga timer."""
        self.now += timedelta(seconds=seconds)
        for loan_id, saga in list(self.sagas.items()):
            due = saga.next_due
            if due is not None and due <= self.now:
                self.sagas[loan_id], commands = payout.on_timer(saga, self.now, self.policy)
                self.outbox.extend(commands)
        self.run()

    def settle_all(self, max_seconds: float = 3600) -> None:
        """Tick until no saga is running (or `max_seconds` pass)."""
        waited = 0.0
        while any(not s.finished for s in self.sagas.values()) and waited < max_seconds:
            self.tick(30)
            waited += 30

    # -- the processors ------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """The loan processor: dedup, saga guard, loan evolve, saga react, fan-out."""
        if event.event_id in self.applied:
            return
        loan_id = event.key
        saga = self.sagas.get(loan_id)
        before = self.loans.get(loan_id)
        try:
            if isinstance(event, LoanCanceled):
                payout.check_cancel(saga)
            after = evolve(before, event)
        except (LifecycleViolation, DependencyMissing) as exc:
            self.dead.append((event, str(exc)))
            return
        self.applied.add(event.event_id)
        self.loans[loan_id] = after
        if isinstance(event, LoanApproved):
            saga, commands = payout.start(after, event, self.now, self.policy)
        else:
            saga, commands = payout.react(saga, event, self.now, self.policy)
            commands += payout.on_repayment(saga, after, event)
        if saga is not None:
            self.sagas[loan_id] = saga
        self.outbox.extend(commands)
        self.ledger += fanout.ledger_entries(event, before, after)
        if (note := fanout.notification(event, before, after)) is not None:
            self.notifications.append(note)
        if (stat := fanout.daily_payout(event, after)) is not None:
            self.daily.append(stat)
        self._check()

    def run(self) -> None:
        """Carry out commands until none are left."""
        while self.outbox:
            self.run_one()

    def run_one(self) -> None:
        """Carry out the next command."""
        command = self.outbox.popleft()
        if isinstance(command, Emit):
            self.payout_events.append(command.event)
            self.apply(command.event)
        elif isinstance(command, ToTreasury):
            partner = command.command.partner_id
            before = self.lines.get(partner)
            line, events = treasury.react(before, command.command, self.now)
            self.lines[partner] = line
            if before is None or line.reserved_cents > before.reserved_cents:
                self.reservations.append((line.in_use_cents, line.limit_cents))
            self._check()
            self.outbox.extend(Emit(e) for e in events)
        else:
            self.calls.append(command)
            saga = self.sagas[command.loan_id]
            result = self.gateway(command)
            self.sagas[command.loan_id], commands = payout.on_gateway_result(
                saga, result, self.now, self.policy, command.attempt
            )
            self.outbox.extend(commands)

    def _check(self) -> None:
        for check in self.checks:
            check(self)

    # -- views ---------------------------------------------------------------------------

    def types(self, loan_id: str = "L1") -> list[str]:
        """The payout events applied for `loan_id`, in order (duplicates once)."""
        seen: list[str] = []
        for event in self.payout_events:
            if event.key == loan_id and event.event_id in self.applied and event.type not in seen:
                seen.append(event.type)
        return seen
