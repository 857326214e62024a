"""`tests.bench.rocksdb_memory` at a tiny size, so that it cannot rot (figures not checked)."""

from __future__ import annotations

import pytest

from tests.bench import rocksdb_memory


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", rocksdb_memory.MODES)
def test_each_budget_is_measured_in_its_own_process(mode: str) -> None:
    measured = rocksdb_memory.measure(mode, writes=2_000, keys=200, databases=2)
    assert measured["peak_mib"] >= measured["end_mib"] > 0
    assert measured["writes_per_s"] > 0
