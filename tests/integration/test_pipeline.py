"""The loan lifecycle end to end: real broker, real PostgreSQL, a real worker process."""

from __future__ import annotations

import pytest

from tests.harness import Pipeline
from tests.traffic import build
from tests.verify import assert_invalid_are_dead, assert_read_models_match

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


async def test_fifty_thousand_events_match_the_oracle(pipeline: Pipeline) -> None:
    traffic = build(seed=7, loans=2000, min_events=50_000)
    assert sum(map(len, traffic.lifecycles)) >= 50_000
    await pipeline.create_topics()
    pipeline.start_worker()
    await pipeline.produce(traffic.stream)
    await pipeline.wait_caught_up(timeout=400)

    await assert_read_models_match(pipeline, traffic)
    await assert_invalid_are_dead(pipeline, traffic)
