"""Crash test: SIGKILL the worker at random moments while it works through 50,000 events.

The final read models must equal the oracle exactly: nothing lost, nothing applied twice.
Restarts alternate between keeping the worker's local RocksDB and wiping it, so both local
state and a full changelog recovery are exercised.
"""

from __future__ import annotations

import random

import pytest

from tests.harness import Pipeline
from tests.traffic import build
from tests.verify import assert_invalid_are_dead, assert_read_models_match

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

KILLS = 4


async def test_sigkill_during_processing_loses_and_repeats_nothing(pipeline: Pipeline) -> None:
    traffic = build(seed=11, loans=2000, min_events=50_000)
    await pipeline.create_topics()
    await pipeline.produce(traffic.stream)

    kills = await pipeline.crash_repeatedly(random.Random(20261122), KILLS)
    assert kills >= 3, f"the worker finished after only {kills} kills; make the backlog larger"
    await pipeline.wait_caught_up(timeout=600)

    await assert_read_models_match(pipeline, traffic)
    await assert_invalid_are_dead(pipeline, traffic)
