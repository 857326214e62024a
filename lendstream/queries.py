"""Read-side queries used by the CLI: a loan now or as of a time (`loan_history`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import orjson

from lendstream.pg import resolve_dsn
from lendstream.settings import Settings

AS_OF_SQL = """
SELECT * FROM "{schema}".loan_history
WHERE loan_id = $1 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to > $2)
ORDER BY version DESC
LIMIT 1
"""
NOW_SQL = 'SELECT * FROM "{schema}".loan_summary WHERE loan_id = $1'


async def loan_as_of(
    settings: Settings, loan_id: str, as_of: datetime | None
) -> dict[str, Any] | None:
    """The loan's row now (`loan_summary`) or as it was at `as_of` (`loan_history`)."""
    conn = await asyncpg.connect(resolve_dsn(settings))
    try:
        if as_of is None:
            row = await conn.fetchrow(NOW_SQL.format(schema=settings.pg_schema), loan_id)
        else:
            row = await conn.fetchrow(AS_OF_SQL.format(schema=settings.pg_schema), loan_id, as_of)
        return dict(row) if row else None
    finally:
        await conn.close()


def format_loan(row: dict[str, Any], as_json: bool = False) -> str:
    if as_json:
        return orjson.dumps(row, option=orjson.OPT_INDENT_2).decode()
    width = max(len(k) for k in row)
    return "\n".join(f"{k.ljust(width)}  {'' if v is None else v}" for k, v in row.items())
