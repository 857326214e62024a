"""Generated traffic: loan lifecycles from a seeded customer population (pure, deterministic).

`lifecycle` makes one loan's events in causal order; `interleave` merges many loans into one
stream the way independent upstream systems would publish them. `with_payouts=True` also emits
the payout events the payout saga would write, for a worker running without the saga
(`LENDSTREAM_PAYOUT_SAGA=false`); with the saga, traffic leaves them out and first publishes the
partners' credit lines (`credit_lines`).

Each partner lends in one currency (`partner_currency`), as its one credit line has one
currency (contract §5): a loan in another currency would always fail reservation.
"""

from __future__ import annotations

import heapq
import random
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from lendstream.domain.loans import total_due
from lendstream.topics import LOAN_EVENTS, PAYMENT_EVENTS, PAYOUT_EVENTS, TREASURY_EVENTS

CURRENCIES = ("EUR", "EUR", "EUR", "USD", "GBP")
MONTH = timedelta(days=30)
#: Partners of a simulated population (`P00`, `P01`, …).
PARTNERS = 5
#: A generous credit line: ample for hours of `dev --simulate` traffic even if nothing is repaid.
GENEROUS_LIMIT_CENTS = 10**13
#: A tight credit line: a handful of the simulation's loans (50,000 to 5,000,000 cents) at once.
TIGHT_LIMIT_CENTS = 10_000_000
#: How many partners (the last ones) `credit_lines` keeps tight, so reservation failures show.
TIGHT_PARTNERS = 1


@dataclass(frozen=True, slots=True)
class Produced:
    """One message to produce: topic, key and the JSON-ready envelope."""

    topic: str
    key: str
    value: dict[str, Any]


def _id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _envelope(
    rng: random.Random, loan_id: str, kind: str, at: datetime, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "event_id": _id(rng),
        "type": kind,
        "schema_version": 1,
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "loan_id": loan_id,
        "correlation_id": f"loan:{loan_id}",
        "data": data,
    }


def partner_name(number: int) -> str:
    return f"P{number:02d}"


def partner_currency(partner_id: str) -> str:
    """The one currency a partner lends in: `P<n>` takes `CURRENCIES[n]` (cyclically), so the
    simulated partners keep the currency mix; other ids take a stable hash."""
    digits = partner_id.removeprefix("P")
    index = int(digits) if digits.isdigit() else zlib.crc32(partner_id.encode())
    return CURRENCIES[index % len(CURRENCIES)]


def credit_lines(
    seed: int,
    partners: int = PARTNERS,
    tight: int = TIGHT_PARTNERS,
    at: datetime | None = None,
    limit_cents: int = GENEROUS_LIMIT_CENTS,
    tight_limit_cents: int = TIGHT_LIMIT_CENTS,
) -> list[Produced]:
    """One `CreditLineSet` per partner of a simulated population (key `partner_id`, on
    `treasury-events`), in the partner's currency: `limit_cents` for all but the last `tight`
    partners, which get `tight_limit_cents` so that some of their reservations fail."""
    if not 0 <= tight <= partners:
        raise ValueError(f"tight must be between 0 and partners ({partners}), got {tight}")
    rng = random.Random(seed)
    occurred = (at or datetime(2026, 1, 1, tzinfo=UTC)).isoformat().replace("+00:00", "Z")
    lines = []
    for number in range(partners):
        partner = partner_name(number)
        limit = tight_limit_cents if number >= partners - tight else limit_cents
        data = {"partner_id": partner, "currency": partner_currency(partner), "limit_cents": limit}
        value = {
            "event_id": _id(rng),
            "type": "CreditLineSet",
            "schema_version": 1,
            "occurred_at": occurred,
            "correlation_id": f"partner:{partner}",
            "data": data,
        }
        lines.append(Produced(TREASURY_EVENTS.name, partner, value))
    return lines


def lifecycle(
    rng: random.Random, loan_id: str, customer_id: str, partner_id: str, start: datetime,
    **options: Any,
) -> list[Produced]:  # fmt: skip
    """One loan's events in causal order, ending in any of the lifecycle's end states
    (`options` as for `loan_events`)."""
    return [p for _, p in loan_events(rng, loan_id, customer_id, partner_id, start, **options)]


def loan_events(
    rng: random.Random,
    loan_id: str,
    customer_id: str,
    partner_id: str,
    start: datetime,
    with_payouts: bool = True,
    max_repayments: int = 24,
    month: timedelta = MONTH,
) -> Iterator[tuple[datetime, Produced]]:
    """`lifecycle`, lazily: (occurred_at, message) pairs, drawing from `rng` only when the next
    event is asked for (so many loans can be in flight at once, sharing one `rng`)."""
    currency = partner_currency(partner_id)
    amount = rng.randrange(50_000, 5_000_000, 100)
    term = rng.choice((3, 6, 12, 24, 36))
    at = start
    month_minutes = month.total_seconds() / 60

    def emit(
        topic: str, kind: str, data: dict[str, Any], minutes: float = 5
    ) -> tuple[datetime, Produced]:
        nonlocal at
        at = at + timedelta(minutes=minutes * (0.5 + rng.random()))
        return at, Produced(topic, loan_id, _envelope(rng, loan_id, kind, at, data))

    yield emit(LOAN_EVENTS.name, "LoanApplied", {
        "customer_id": customer_id, "partner_id": partner_id, "amount_cents": amount,
        "currency": currency, "term_months": term,
    })  # fmt: skip
    roll = rng.random()
    if roll < 0.15:
        yield emit(LOAN_EVENTS.name, "LoanRejected", {"reason": "affordability"})
        return
    if roll < 0.20:
        yield emit(LOAN_EVENTS.name, "LoanCanceled", {"reason": "customer withdrew"})
        return
    approved = amount if rng.random() < 0.7 else rng.randrange(100, amount + 1, 100)
    rate = rng.choice((0, 250, 499, 750, 1200))
    yield emit(
        LOAN_EVENTS.name,
        "LoanApproved",
        {"approved_amount_cents": approved, "interest_rate_bps": rate},
    )
    if roll < 0.25:
        yield emit(LOAN_EVENTS.name, "LoanCanceled", {"reason": "customer withdrew after approval"})
        return
    if not with_payouts:
        return
    payout_id = f"payout:{loan_id}"
    yield emit(PAYOUT_EVENTS.name, "PayoutRequested", {
        "payout_id": payout_id, "partner_id": partner_id, "amount_cents": approved,
        "currency": currency,
    }, minutes=0.1)  # fmt: skip
    if roll < 0.30:
        yield emit(
            PAYOUT_EVENTS.name,
            "PayoutFailed",
            {"payout_id": payout_id, "reason": "gateway said no"},
            1,
        )
        yield emit(PAYOUT_EVENTS.name, "FundsReleased", {
            "payout_id": payout_id, "partner_id": partner_id, "amount_cents": approved,
        }, minutes=0.1)  # fmt: skip
        return
    yield emit(PAYOUT_EVENTS.name, "LoanPaidOut", {
        "payout_id": payout_id, "amount_cents": approved, "currency": currency,
    }, minutes=1)  # fmt: skip
    for pay in _installments(rng, total_due(approved, rate), term, max_repayments):
        yield emit(PAYMENT_EVENTS.name, "RepaymentReceived", {
            "payment_id": _id(rng), "amount_cents": pay, "currency": currency,
        }, minutes=month_minutes)  # fmt: skip


def _installments(rng: random.Random, due: int, term: int, max_repayments: int) -> Iterator[int]:
    """Monthly amounts until `due` is repaid (one in ten pays extra), lazily drawn from `rng`."""
    installment = max(-(-due // term), 1)
    repaid = 0
    for _ in range(min(term, max_repayments)):
        if repaid >= due:
            return
        pay = installment if rng.random() < 0.9 else installment + rng.randrange(0, installment)
        yield pay
        repaid += pay


@dataclass(frozen=True, slots=True)
class _Terms:
    currency: str
    term_months: int
    approved_cents: int = 0
    interest_rate_bps: int = 0


@dataclass
class Repayments:
    """Repayments for traffic whose payouts the saga makes (`with_payouts=False`): a customer
    repays a loan only once it was paid out, which the generator cannot know in advance.

    `observe` every produced message: the terms of each loan are kept from its `LoanApplied`
    and `LoanApproved` (forgotten when it is rejected or canceled). `on_payout_event` takes a
    `payout-events` value: a `LoanPaidOut` of a known loan gives its repayments (a `month`
    apart from the payout, as `loan_events` makes them, deterministic for `seed` and the loan)
    and forgets the loan; a `PayoutFailed` forgets it; anything else gives nothing.
    """

    seed: int
    month: timedelta = MONTH
    max_repayments: int = 24
    _terms: dict[str, _Terms] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        """Loans waiting for their payout."""
        return len(self._terms)

    def observe(self, produced: Produced) -> None:
        kind, data, loan_id = produced.value["type"], produced.value["data"], produced.key
        if kind == "LoanApplied":
            self._terms[loan_id] = _Terms(data["currency"], data["term_months"])
        elif kind == "LoanApproved" and loan_id in self._terms:
            self._terms[loan_id] = replace(
                self._terms[loan_id],
                approved_cents=data["approved_amount_cents"],
                interest_rate_bps=data["interest_rate_bps"],
            )
        elif kind in ("LoanRejected", "LoanCanceled"):
            self._terms.pop(loan_id, None)

    def on_payout_event(self, value: dict[str, Any]) -> list[Produced]:
        kind, loan_id = value.get("type"), str(value.get("loan_id"))
        if kind == "PayoutFailed":
            self._terms.pop(loan_id, None)
        if kind != "LoanPaidOut" or loan_id not in self._terms:
            return []
        terms = self._terms.pop(loan_id)
        rng = random.Random(f"{self.seed}:{loan_id}")
        at = datetime.fromisoformat(value["occurred_at"].replace("Z", "+00:00"))
        due = total_due(terms.approved_cents, terms.interest_rate_bps)
        repayments = []
        for pay in _installments(rng, due, terms.term_months, self.max_repayments):
            at += self.month * (0.5 + rng.random())
            data = {"payment_id": _id(rng), "amount_cents": pay, "currency": terms.currency}
            envelope = _envelope(rng, loan_id, "RepaymentReceived", at, data)
            repayments.append(Produced(PAYMENT_EVENTS.name, loan_id, envelope))
        return repayments


def population(
    seed: int,
    loans: int,
    customers: int | None = None,
    partners: int = PARTNERS,
    with_payouts: bool = True,
    start: datetime | None = None,
    max_repayments: int = 24,
) -> list[list[Produced]]:
    """`loans` lifecycles for a seeded population (some customers have several loans)."""
    rng = random.Random(seed)
    customers = customers or max(loans * 2 // 3, 1)
    base = start or datetime(2026, 1, 1, tzinfo=UTC)
    result = []
    for n in range(loans):
        loan_id = f"L{seed}-{n:07d}"
        customer = f"C{rng.randrange(customers):07d}"
        partner = partner_name(rng.randrange(partners))
        began = base + timedelta(minutes=rng.randrange(0, 60 * 24 * 30))
        result.append(
            lifecycle(
                rng,
                loan_id,
                customer,
                partner,
                began,
                with_payouts=with_payouts,
                max_repayments=max_repayments,
            )
        )
    return result


def interleave(seed: int, lifecycles: list[list[Produced]]) -> Iterator[Produced]:
    """Merge lifecycles into one stream, keeping each loan's own order."""
    rng = random.Random(seed)
    cursors = [0] * len(lifecycles)
    live = [i for i, events in enumerate(lifecycles) if events]
    while live:
        pick = rng.randrange(len(live))
        i = live[pick]
        yield lifecycles[i][cursors[i]]
        cursors[i] += 1
        if cursors[i] == len(lifecycles[i]):
            live[pick] = live[-1]
            live.pop()


#: Time compression of `Simulation`: a repayment "month" lasts one simulated day, so an active
#: customer acts about once a simulated day and a loan's whole life fits in a few weeks.
COMPRESSED_MONTH = timedelta(days=1)
#: Days on which a loan's customer acts (applies or cancels, then repays once a compressed
#: month): measured on the generator's own mix, it sets how many loans start per day for `dau`.
ACTIVE_DAYS_PER_LOAN = 8.8
#: Size of the customer base per daily active customer (customers may hold several loans).
CUSTOMERS_PER_DAU = 10
#: Upstream event types that a customer causes (the others are the lender's or the saga's).
CUSTOMER_ACTIONS = frozenset({"LoanApplied", "LoanCanceled", "RepaymentReceived"})
DAY = timedelta(days=1)


@dataclass
class Simulation:
    """An endless, deterministic stream of loan events from a population of `dau` daily active
    customers, in event-time (`occurred_at`) order, as independent upstream systems would
    publish them live.

    Each simulated day `dau / ACTIVE_DAYS_PER_LOAN` customers apply (evenly over the day, with
    jitter); each loan then follows `loan_events` with the compressed `month`, so that at steady
    state (after about `max_repayments` compressed months) about `dau` distinct customers act
    per simulated day and about 70% of the events are repayments. Loans are generated
    lazily, so memory grows with the loans in flight, not with the stream.

    Iterating is pure and deterministic for `seed` (iterating again continues the same
    stream: `islice(sim, n)` twice gives the first 2n events); the counters (`produced`, `loans_started`,
    `clock`, `by_type`, `active_yesterday`) describe what has been yielded so far.
    """

    seed: int
    dau: int
    with_payouts: bool = True
    month: timedelta = COMPRESSED_MONTH
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    partners: int = PARTNERS
    max_repayments: int = 24
    produced: int = 0
    loans_started: int = 0
    clock: datetime | None = None
    by_type: dict[str, int] = field(default_factory=dict)
    active_yesterday: int = 0
    _stream: Iterator[Produced] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dau < 1:
            raise ValueError(f"dau must be at least 1, got {self.dau}")

    @property
    def arrival_interval(self) -> timedelta:
        """Simulated time between two loan applications."""
        return DAY * ACTIVE_DAYS_PER_LOAN / self.dau

    def __iter__(self) -> Iterator[Produced]:
        """The stream; iterating again continues where the last iteration stopped."""
        if self._stream is None:
            self._stream = self._generate()
        return self._stream

    def _generate(self) -> Iterator[Produced]:
        rng = random.Random(self.seed)
        customers = self.dau * CUSTOMERS_PER_DAU
        in_flight: list[_InFlight] = []  # a heap: the next event of each loan in flight
        next_arrival = self._arrival(rng, 0)
        day, active_today = self.start.date(), set[str]()
        while True:
            if not in_flight or next_arrival <= in_flight[0].at:
                heapq.heappush(in_flight, self._start_loan(rng, next_arrival, customers))
                next_arrival = self._arrival(rng, self.loans_started)
                continue
            loan = in_flight[0]
            produced = loan.produced
            if loan.at.date() != day:
                day, self.active_yesterday, active_today = loan.at.date(), len(active_today), set()
            kind = produced.value["type"]
            if kind in CUSTOMER_ACTIONS:
                active_today.add(loan.customer)
            self.clock, self.produced = loan.at, self.produced + 1
            self.by_type[kind] = self.by_type.get(kind, 0) + 1
            if loan.advance():
                heapq.heapreplace(in_flight, loan)
            else:
                heapq.heappop(in_flight)
            yield produced

    def _start_loan(self, rng: random.Random, at: datetime, customers: int) -> _InFlight:
        number = self.loans_started
        self.loans_started += 1
        customer = f"C{rng.randrange(customers):08d}"
        partner = partner_name(rng.randrange(self.partners))
        events = loan_events(rng, f"L{self.seed}-{number:08d}", customer, partner, at,
                             self.with_payouts, self.max_repayments, self.month)  # fmt: skip
        loan = _InFlight(number, customer, events)
        loan.advance()
        return loan

    def _arrival(self, rng: random.Random, number: int) -> datetime:
        return self.start + self.arrival_interval * (number + rng.random())


class _InFlight:
    """A loan whose events are not all yielded yet, ordered by its next event's time."""

    __slots__ = ("at", "customer", "events", "number", "produced")

    def __init__(
        self, number: int, customer: str, events: Iterator[tuple[datetime, Produced]]
    ) -> None:
        self.number, self.customer, self.events = number, customer, events
        self.at: datetime
        self.produced: Produced

    def advance(self) -> bool:
        """Move to the loan's next event; False when it has none left."""
        following = next(self.events, None)
        if following is None:
            return False
        self.at, self.produced = following
        return True

    def __lt__(self, other: _InFlight) -> bool:
        return (self.at, self.number) < (other.at, other.number)
