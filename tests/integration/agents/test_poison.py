"""Poison suite (issue 3, acceptance 1): every kind of bad input mixed into ≥ 10,000 valid
events, on the real broker and PostgreSQL, with a real worker.

Each poison message ends where it belongs — dead with a readable reason, parked then applied,
or ignored as a duplicate — every valid event is reflected exactly in the read models, and the
worker never restarts an agent because of input.
"""

from __future__ import annotations

import random

import pytest

from tests.harness import Pipeline
from tests.poison import early_events, invalid_poison, orphans, violations
from tests.traffic import Traffic, build
from tests.verify import assert_read_models_match

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
PARK_DEADLINE = 4.0


async def test_poison_ends_where_it_belongs_and_valid_events_are_exact(pipeline: Pipeline) -> None:
    rng = random.Random(3)
    traffic = build(seed=23, loans=600, min_events=10_000, invalid=0)
    invalid = invalid_poison("PZ")
    violating_lives, violating = violations("PZ")
    early_lives, early_stream = early_events("PZ")
    lost = orphans("PZ", 3)
    huge = [p for p in invalid if p.name == "a 2 MiB value"]
    stream: list[object] = list(traffic.stream)
    for item in [*[p.message for p in invalid if p not in huge], *lost]:
        stream.insert(rng.randrange(len(stream) + 1), item)
    # Kafka orders nothing across topics, and a life's events are appended within the same
    # millisecond: each step waits until the worker has caught up, so that the events a
    # violation breaks are applied before it, and an early event is received before what it
    # depends on, as in real time (contract §4: the order is the order the processor
    # receives them).
    lives = [item for life in violating_lives for item in life]
    steps = [
        [item for item in lives if item.topic == "loan-events"],
        [item for item in lives if item.topic != "loan-events"],
        [p.message for p in violating],
    ]

    await pipeline.create_topics()
    pipeline.start_worker(park_deadline=PARK_DEADLINE)
    await pipeline.produce(stream)  # type: ignore[arg-type]
    await pipeline.produce([p.message for p in huge], max_request_size=4 * 1024 * 1024)
    for step in [*steps, *([item] for item in early_stream)]:  # early ones one at a time
        await pipeline.wait_caught_up(timeout=300)
        await pipeline.produce(step)  # type: ignore[arg-type]
    await pipeline.wait_caught_up(timeout=300)
    orphan_keys = [o.key for o in lost]
    await pipeline.wait_for(
        "SELECT status FROM dead_letters WHERE key = ANY($1) AND status = 'dead'",
        lambda rows: len(rows) == len(orphan_keys), 60, "orphans dead after the deadline",
        orphan_keys,
    )  # fmt: skip

    lifecycles = traffic.lifecycles + violating_lives + early_lives
    await assert_read_models_match(pipeline, Traffic(lifecycles, [], traffic.duplicates, []))
    letters = await pipeline.fetch("SELECT * FROM dead_letters")
    by_key: dict[str, list[dict[str, object]]] = {}
    for letter in letters:
        by_key.setdefault(str(letter["key"]), []).append(letter)

    for poison in [*invalid, *violating]:
        rows = by_key.pop(poison.key, [])
        dead = [r for r in rows if r["status"] != "released"]  # the rest parked, then applied
        assert len(dead) == 1, (poison.name, rows)
        row = dead[0]
        assert (row["status"], row["error_class"]) == ("dead", poison.error_class), (
            poison.name,
            row,
        )
        error = str(row["error"])
        assert poison.mentions in error and "Traceback" not in error and len(error) < 500, (
            poison.name, error,
        )  # fmt: skip
    for key in orphan_keys:
        (row,) = by_key.pop(key)
        assert (row["status"], row["error_class"]) == ("dead", "ParkDeadline"), row
    for lives in early_lives:
        rows = by_key.pop(lives[0].key)
        assert rows and {r["status"] for r in rows} == {"released"}, rows
    assert all(r["status"] == "released" for rows in by_key.values() for r in rows), [
        (k, [(r["status"], r["error"]) for r in rows]) for k, rows in list(by_key.items())[:5]
    ]
    pipeline.assert_no_crash()
