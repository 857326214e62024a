"""`lendstream simulate`: produce simulated loan traffic to the configured broker.

The traffic is `simulation.Simulation` (a seeded customer population, deterministic). It first
sets one credit line per partner of the population on `treasury-events`
(`simulation.credit_lines`, not counted as events); the payout events are the worker's payout
saga's, unless `LENDSTREAM_PAYOUT_SAGA=false`, when the traffic writes them itself. Two modes:

- paced: `rate` events per second for `duration` seconds, a progress line every few seconds;
- backlog: the first `count` events as fast as the broker takes them, then exit.

The broker is `LENDSTREAM_KAFKA`, or else the embedded broker of a running `lendstream dev`
(found through the endpoints file it writes in the data dir). The topics are created first if
missing, with `LENDSTREAM_PARTITIONS` partitions, so that the broker never auto-creates them with
another partition count.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lendstream.admin import ensure_topics
from lendstream.kafka import with_broker
from lendstream.producer import kafka_producer, produce_all
from lendstream.settings import Settings, SettingsError
from lendstream.simulation import Produced, Simulation, credit_lines
from lendstream.topics import PAYMENT_EVENTS

PROGRESS_EVERY_SECONDS = 3.0
TICK_SECONDS = 0.05
BACKLOG_CHUNK = 20_000

Say = Callable[[str], None]


class NoBroker(Exception):
    """Neither `LENDSTREAM_KAFKA` nor a running `lendstream dev` names a broker."""


@dataclass
class ProduceReport:
    """What one `produce_*` call wrote."""

    events: int = 0
    seconds: float = 0.0
    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def add(self, ends: dict[tuple[str, int], int], events: int) -> None:
        self.events += events
        for tp, offset in ends.items():
            self.ends[tp] = max(self.ends.get(tp, -1), offset)


def broker_for(settings: Settings) -> list[str]:
    """Bootstrap servers: `LENDSTREAM_KAFKA`, else the running dev stack's embedded broker."""
    try:
        return with_broker(settings).bootstrap_servers
    except SettingsError as exc:
        raise NoBroker(
            f"no broker: set LENDSTREAM_KAFKA or start `lendstream dev` (with the same "
            f"LENDSTREAM_DATA_DIR, now {settings.data_dir}): {exc}"
        ) from None


def run_simulate(
    settings: Settings,
    dau: int,
    duration: float,
    rate: float,
    seed: int,
    backlog: int | None,
    say: Say,
) -> ProduceReport:
    """The `simulate` command: paced traffic, or a backlog when `backlog` is set."""
    bootstrap = broker_for(settings)
    sim = Simulation(seed=seed, dau=dau, with_payouts=not settings.payout_saga)
    say(f"broker {','.join(bootstrap)}; {dau:,} daily active customers, seed {seed}")

    async def run() -> ProduceReport:
        kafka = ",".join(f"kafka://{server}" for server in bootstrap)
        await ensure_topics(settings.model_copy(update={"kafka": kafka}))
        lines = credit_lines(seed, sim.partners, at=sim.start)
        await produce_credit_lines(bootstrap, lines)
        say(f"credit lines set: {describe_credit_lines(lines)}")
        if backlog is not None:
            return await produce_backlog(bootstrap, sim, backlog, say)
        return await produce_paced(bootstrap, sim, rate, duration, say)

    report = asyncio.run(run())
    say(f"done: {progress_line(sim, report)}")
    return report


async def produce_credit_lines(bootstrap: list[str], lines: list[Produced]) -> None:
    producer = kafka_producer(bootstrap)
    await producer.start()
    try:
        await produce_all(producer, lines)
    finally:
        await producer.stop()


def describe_credit_lines(lines: list[Produced]) -> str:
    """`P00 EUR 100,000,000,000.00, …` (limits in major units)."""
    data = [line.value["data"] for line in lines]
    return ", ".join(
        f"{d['partner_id']} {d['currency']} {d['limit_cents'] / 100:,.2f}" for d in data
    )


async def produce_backlog(
    bootstrap: list[str], sim: Simulation, count: int, say: Say | None = None
) -> ProduceReport:
    """The next `count` events of `sim`, as fast as the broker acknowledges them."""
    report = ProduceReport()
    producer = kafka_producer(bootstrap)
    await producer.start()
    started = last_said = time.monotonic()
    try:
        while report.events < count:
            chunk = list(itertools.islice(sim, min(BACKLOG_CHUNK, count - report.events)))
            report.add(await produce_all(producer, chunk), len(chunk))
            report.seconds = time.monotonic() - started
            if say and time.monotonic() - last_said >= PROGRESS_EVERY_SECONDS:
                say(progress_line(sim, report))
                last_said = time.monotonic()
    finally:
        await producer.stop()
    report.seconds = time.monotonic() - started
    return report


async def produce_paced(
    bootstrap: list[str], sim: Simulation, rate: float, duration: float, say: Say | None = None
) -> ProduceReport:
    """`sim`'s next events at `rate` per second for `duration` seconds.

    Sends what is due every `TICK_SECONDS` and waits for the acknowledgements (between ticks
    it sleeps: it does not spin a core the consumers under test need); when the broker
    is slower than `rate`, the backlog of due events is sent as soon as it can be, and the
    report's `rate` tells what was reached.
    """
    report = ProduceReport()
    producer = kafka_producer(bootstrap)
    await producer.start()
    started = last_said = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < duration:
            due = int(rate * elapsed) - report.events
            if due > 0:
                chunk = list(itertools.islice(sim, due))
                report.add(await produce_all(producer, chunk), len(chunk))
            report.seconds = time.monotonic() - started
            if say and time.monotonic() - last_said >= PROGRESS_EVERY_SECONDS:
                say(progress_line(sim, report))
                last_said = time.monotonic()
            await asyncio.sleep(TICK_SECONDS)
    finally:
        await producer.stop()
    report.seconds = time.monotonic() - started
    return report


def progress_line(sim: Simulation, report: ProduceReport) -> str:
    repayments = sim.by_type.get("RepaymentReceived", 0) / max(sim.produced, 1)
    clock = sim.clock.strftime("%Y-%m-%d %H:%M") if sim.clock else "-"
    return (
        f"{report.events:,} events in {report.seconds:.1f}s ({report.rate:,.0f}/s) | "
        f"simulated {clock} | loans {sim.loans_started:,} | "
        f"customers active yesterday {sim.active_yesterday:,} | "
        f"{PAYMENT_EVENTS.name} {repayments:.0%}"
    )
