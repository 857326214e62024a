"""The `lendstream dlq` actions: connect, call `lendstream.dlq`, and format the answer."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import asyncpg

from lendstream import dlq
from lendstream.kafka import with_broker
from lendstream.pg import resolve_dsn
from lendstream.settings import Settings


async def run(settings: Settings, args: argparse.Namespace) -> str:
    """Carry out `args.action`; returns what to print. `DlqError` for what the user can fix."""
    conn = await asyncpg.connect(resolve_dsn(settings))
    schema = settings.pg_schema
    try:
        if args.action == "list":
            letters = await dlq.list_letters(conn, schema, args.status, args.topic, args.limit)
            return dlq.to_json(letters) if args.json else dlq.format_list(letters)
        if args.action == "show":
            (letter,) = await dlq.fetch_letters(conn, schema, [args.id])
            return dlq.to_json([letter]) if args.json else dlq.format_letter(letter)
        letters = await _targets(conn, schema, args)
        now = datetime.now(UTC)
        if args.action == "replay":
            corrected = dlq.read_value_file(args.value_file) if args.value_file else None
            requests = dlq.replay_requests(letters, corrected, now)
        else:
            requests = dlq.discard_requests(letters, args.reason, now)
        await dlq.send(with_broker(settings), requests)
        after = await dlq.wait_for(conn, schema, letters, args.wait) if args.wait > 0 else []
        return _outcome(args.action, letters, after)
    finally:
        await conn.close()


async def _targets(
    conn: asyncpg.Connection, schema: str, args: argparse.Namespace
) -> list[dict[str, object]]:
    if getattr(args, "all", False):
        if args.ids:
            raise dlq.DlqError("give dead letter ids or --all, not both")
        letters = await dlq.open_letters(conn, schema, args.topic)
        if not letters:
            raise dlq.DlqError(
                "no dead letters with status dead" + (f" on {args.topic}" if args.topic else "")
            )
        return letters
    if not args.ids:
        raise dlq.DlqError("give the ids of the dead letters (or --all)")
    return await dlq.fetch_letters(conn, schema, list(dict.fromkeys(args.ids)))


def _outcome(action: str, before: list[dict[str, object]], after: list[dict[str, object]]) -> str:
    if not after:
        return f"{action} requested for {len(before)} dead letter(s)"
    lines = []
    for letter in after:
        status = letter["status"]
        note = f": {letter['error']}" if status in dlq.OPEN else ""
        lines.append(f"{letter['id']}  {status}{note}")
    return "\n".join(lines)
