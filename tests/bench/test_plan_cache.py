"""The plan-cache benchmark runs (its figures are for reading, not asserted)."""

from __future__ import annotations

import pytest

from lendstream.embedded import Postgres
from tests.bench import plan_cache

pytestmark = [pytest.mark.timeout(120)]


async def test_measures_both_plans(postgres: Postgres) -> None:
    results = await plan_cache.measure(postgres.dsn, rounds=2)
    assert set(results) == {"cached plan", "planned each time"}
    assert all(ms > 0 for ms in results.values())
