"""CPU cost per event of the pure parts of the loan processor's batch, in-process: no broker,
no PostgreSQL, no Faust. It replays what `agents/loans.py` does to a batch, phase by phase, on
simulated traffic, so the profile's percentages can be read as microseconds.

    python -m tests.bench.components [--events 100000] [--batch 2000] [--dau 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson

from lendstream.domain.loans import evolve
from lendstream.domain.sequencing import Message, Position, receive
from lendstream.projections.loans import rows_for
from lendstream.simulation import Simulation
from lendstream.tables import loans as loans_table
from lendstream.topics import BY_NAME

Raw = tuple[str, bytes, bytes]


def traffic(events: int, dau: int, seed: int = 1) -> list[Raw]:
    return [
        (p.topic, p.key.encode(), orjson.dumps(p.value))
        for p in itertools.islice(Simulation(seed=seed, dau=dau), events)
    ]


class Clock:
    """Seconds spent per phase, summed over batches."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - started


def run(raw: list[Raw], batch: int) -> dict[str, float]:
    """Seconds per phase for all of `raw`, in batches as the agent forms them."""
    clock = Clock()
    table: dict[str, bytes] = {}
    offsets: dict[str, int] = {}
    for start in range(0, len(raw), batch):
        process(raw[start : start + batch], table, offsets, clock)
    return clock.spent


def process(
    chunk: list[Raw], table: dict[str, bytes], offsets: dict[str, int], clock: Clock
) -> None:
    """One batch, as `LoanProcessor.process` does it, minus Faust and PostgreSQL."""
    now = datetime.now(UTC)
    with clock.phase("orjson.loads only (part of decode)"):
        for _, _, value in chunk:
            orjson.loads(value)
    with clock.phase("decode + validate (codec, pydantic)"):
        messages = [_message(topic, key, value, offsets) for topic, key, value in chunk]
    with clock.phase("table values decoded (per key)"):
        keys = dict.fromkeys(m.key for m in messages)
        loaded = {key: loans_table.decode(table.get(key)) for key in keys}
    states = dict(loaded)
    outcomes: list[Any] = []
    with clock.phase("fold (sequencing.receive + evolve)"):
        for m in messages:
            states[m.key], out = receive(states[m.key], m, evolve, now)
            outcomes.extend(out)
    with clock.phase("table values encoded (per changed key)"):
        for key, keyed in states.items():
            if keyed != loaded[key]:
                table[key] = loans_table.encode(replace(keyed, seq=loaded[key].seq + 1))
    with clock.phase("projection rows (rows_for)"):
        rows_for(outcomes, now)


def _message(topic: str, key: bytes, value: bytes, offsets: dict[str, int]) -> Message:
    offsets[topic] = offsets.get(topic, -1) + 1
    return Message(
        position=Position(topic, 0, offsets[topic]),
        key=key.decode(),
        timestamp=time.time(),
        decoded=BY_NAME[topic].decode(key, value),
        raw=value,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.components", description=__doc__)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=2_000)
    p.add_argument("--dau", type=int, default=2_000)
    args = p.parse_args(argv)
    raw = traffic(args.events, args.dau)
    spent = run(raw, args.batch)
    total = sum(v for k, v in spent.items() if not k.startswith("orjson"))
    print(f"{args.events:,} events, batches of {args.batch:,}, dau {args.dau:,}")
    print(f"{'phase':<42} {'us/event':>9} {'events/s alone':>15}")
    for phase, seconds in [*spent.items(), ("all of the above (without the orjson line)", total)]:
        per_event = seconds / len(raw)
        print(f"{phase:<42} {per_event * 1e6:9.1f} {1 / per_event:15,.0f}")


if __name__ == "__main__":
    main()
