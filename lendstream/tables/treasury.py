"""The `credit_lines` table: partner_id -> the partner's credit line (with its holds) and `seq`.

Changelog-backed RocksDB, co-partitioned with `treasury-events` and `treasury-commands`; only
the treasury processor writes it. `seq` counts the batches that changed the line: PostgreSQL
keeps a copy (`credit_line_state`) written with `partner_credit`, and the copy with the higher
`seq` wins (see `agents/treasury.py`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import faust
import orjson

from lendstream import jsonbytes
from lendstream.sagas.treasury import CreditLine, Hold
from lendstream.settings import Settings
from lendstream.tables import store

NAME = "credit_lines"


def declare(app: faust.App, settings: Settings) -> faust.Table:
    table = app.Table(
        NAME,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        options=store.options(settings),
        help="partner_id -> credit line, holds per payout, seq",
    )
    assert isinstance(table, faust.Table)  # what `app.Table` makes; typed as its protocol
    return table


def encode(line: CreditLine, seq: int) -> bytes:
    return jsonbytes.dumps({"l": line, "n": seq})


def decode(raw: bytes | None, partner_id: str) -> tuple[CreditLine, int]:
    """The stored line and its seq; an empty line (limit 0) with seq 0 when there is none."""
    if raw is None:
        return CreditLine(partner_id), 0
    obj = orjson.loads(raw)
    return _line_from_json(obj["l"]), obj["n"]


def _line_from_json(obj: dict[str, Any]) -> CreditLine:
    holds = tuple((payout_id, Hold(**hold)) for payout_id, hold in obj.pop("holds"))
    updated_at = obj.pop("updated_at")
    return CreditLine(
        **obj,
        holds=holds,
        updated_at=datetime.fromisoformat(updated_at) if updated_at else None,
    )
