"""`jsonbytes.dumps`: orjson's output without the buffer it grew."""

from __future__ import annotations

import tracemalloc

import orjson

from lendstream import jsonbytes


def test_dumps_is_orjson_in_an_allocation_of_its_own_size() -> None:
    value = {"a": [f"event-{n:040d}" for n in range(60)], "s": {"status": "active"}}
    assert jsonbytes.dumps(value) == orjson.dumps(value)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [jsonbytes.dumps(value) for _ in range(200)]
        per_value = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_value < 1.2 * len(kept[0])  # orjson's own result: 16 KiB for these 3 KB
