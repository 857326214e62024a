"""`projections.loans.json_rows` and `from_json` against a real PostgreSQL: what goes in as one
JSON parameter comes out as the same typed values the arrays of `unnest` gave."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import orjson
import pytest

from lendstream.projections.loans import from_json, json_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TYPES = ("text", "int", "bigint", "timestamptz", "jsonb")
IST = timezone(timedelta(hours=5, minutes=30))


async def test_every_column_type_round_trips(pool: asyncpg.Pool) -> None:
    rows = [
        ('quote " backslash \\ newline \n tab \t', 0, 2**63 - 1,
         datetime(2026, 11, 24, 9, 30, 1, 123456, tzinfo=UTC), '{"a": [1, 2.5, null]}'),
        ("ünïcödé € 💸", -(2**31), -(2**63), datetime(2026, 2, 28, 23, 59, 59, 1, tzinfo=IST),
         '"just a string"'),
        ("", None, None, None, "null"),
        (None, 7, 7, datetime(1999, 12, 31, tzinfo=UTC), '{"nested": {"deep": true}}'),
    ]  # fmt: skip
    param = json_rows([(*r[:-1], orjson.Fragment(r[-1])) for r in rows])

    got = await pool.fetch(from_json(TYPES), param)

    assert [tuple(r.values()) for r in got] == rows


async def test_jsonb_null_is_sql_null_for_other_types_only(pool: asyncpg.Pool) -> None:
    """A JSON null is SQL NULL in a text or number column; in a `jsonb` column it is JSON null
    (the `data` of `event_log` is never null: it is the event's data object)."""
    got = await pool.fetchrow(from_json(("text", "jsonb")), json_rows([(None, None)]))
    assert got is not None and tuple(got.values()) == (None, "null")


async def test_rows_keep_their_order(pool: asyncpg.Pool) -> None:
    """Upserts take row locks in the order of their rows, which the writer sorts by key."""
    ids = [f"L-{i:05d}" for i in range(5_000)]
    got = await pool.fetch(from_json(("text",)), json_rows([(i,) for i in ids]))
    assert [r[0] for r in got] == ids
