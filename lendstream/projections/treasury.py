"""The treasury projection: partner credit lines -> `partner_credit`, their state copy
(`credit_line_state`) and the treasury's dead letters.

The treasury processor drops messages at or below its stored positions before folding, so a
batch is applied once; the statements are guarded anyway (a state only moves to a higher `seq`,
a dead letter is inserted once) for the moment of a rebalance when two workers may both hold a
partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from lendstream.projections.loans import DEAD_LETTER_COLUMNS
from lendstream.sagas.treasury import CreditLine

PROJECTION = "treasury"


@dataclass(frozen=True)
class LineRow:
    line: CreditLine
    seq: int
    state: bytes


@dataclass(frozen=True)
class TreasuryRows:
    lines: list[LineRow] = field(default_factory=list)
    dead_letters: list[tuple[Any, ...]] = field(default_factory=list)  # `dead_letter_row`s


def make_apply(schema: str) -> Any:
    s = f'"{schema}"'
    sql_state = (
        f"INSERT INTO {s}.credit_line_state AS c (partner_id, seq, state) "
        "SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[]) "
        "ON CONFLICT (partner_id) DO UPDATE SET seq = excluded.seq, state = excluded.state, "
        "updated_at = now() WHERE c.seq < excluded.seq RETURNING partner_id"
    )
    sql_credit = (
        f"INSERT INTO {s}.partner_credit AS p (partner_id, currency, limit_cents, in_use_cents, "
        "updated_at) VALUES ($1, $2, $3, $4, coalesce($5, now())) ON CONFLICT (partner_id) DO UPDATE SET "
        "currency = excluded.currency, limit_cents = excluded.limit_cents, "
        "in_use_cents = excluded.in_use_cents, updated_at = excluded.updated_at"
    )
    columns = ", ".join(f'"{c}"' if c == "offset" else c for c in DEAD_LETTER_COLUMNS)
    params = ", ".join(
        f"${i}::jsonb" if c == "headers" else f"${i}"
        for i, c in enumerate(DEAD_LETTER_COLUMNS, start=1)
    )
    sql_dead_letter = (
        f"INSERT INTO {s}.dead_letters ({columns}) VALUES ({params}) ON CONFLICT (id) DO NOTHING"
    )

    async def apply(conn: asyncpg.Connection, payloads: Sequence[TreasuryRows]) -> None:
        for rows in payloads:
            ordered = sorted(rows.lines, key=lambda r: r.line.partner_id)
            if ordered:
                ids = [r.line.partner_id for r in ordered]
                stored = await conn.fetch(
                    sql_state, ids, [r.seq for r in ordered], [r.state for r in ordered]
                )
                written = {r["partner_id"] for r in stored}
                credit = [_credit_row(r.line) for r in ordered if r.line.partner_id in written]
                await conn.executemany(sql_credit, credit)
            if rows.dead_letters:
                await conn.executemany(sql_dead_letter, rows.dead_letters)

    return apply


def _credit_row(line: CreditLine) -> tuple[Any, ...]:
    return line.partner_id, line.currency, line.limit_cents, line.in_use_cents, line.updated_at


def newer_lines_sql(schema: str) -> str:
    """Stored lines newer than the given ones: $1 partner ids, $2 their seqs."""
    return (
        f'SELECT c.partner_id, c.state FROM "{schema}".credit_line_state c '
        "JOIN unnest($1::text[], $2::bigint[]) AS t(partner_id, seq) "
        "ON c.partner_id = t.partner_id WHERE c.seq > t.seq"
    )
