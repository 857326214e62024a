"""`lendstream dlq list|show|replay|discard`: the dead letters, for operators.

`list` and `show` read the `dead_letters` read model. `replay` and `discard` never write it:
they send a `ReplayDeadLetter` / `DiscardDeadLetter` command on `loan-control`, to the partition
of the dead letter, so that the loan processor applies it in the loan's own order (what waited
behind the dead letter follows it). The read model shows the result once the worker has taken
the command; `--wait` waits for that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from lendstream.producer import settings_producer
from lendstream.settings import Settings
from lendstream.topics import BY_NAME, Invalid
from lendstream.topics.control import TOPIC as CONTROL_TOPIC
from lendstream.topics.control import command

STATUSES = ("parked", "released", "dead", "replayed", "discarded")
OPEN = ("parked", "dead")
LIST_COLUMNS = ("id", "status", "topic", "key", "error_class", "attempts", "first_seen_at", "error")


class DlqError(Exception):
    """A request that cannot be carried out; the message is one line for the operator."""


@dataclass(frozen=True)
class Request:
    """One command to send: to `partition` of `loan-control`, keyed `key`."""

    dead_letter_id: str
    key: str
    partition: int
    value: bytes


async def list_letters(
    conn: asyncpg.Connection, schema: str, status: str | None, topic: str | None, limit: int
) -> list[dict[str, Any]]:
    """Dead letters, newest first, optionally of one status and one topic."""
    rows = await conn.fetch(
        f'SELECT * FROM "{schema}".dead_letters '
        "WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR topic = $2) "
        'ORDER BY first_seen_at DESC, topic, partition, "offset" DESC LIMIT $3',
        status,
        topic,
        limit,
    )
    return [dict(r) for r in rows]


async def fetch_letters(
    conn: asyncpg.Connection, schema: str, ids: Sequence[str]
) -> list[dict[str, Any]]:
    """The dead letters `ids`, in the order given; `DlqError` names the first unknown one."""
    rows = await conn.fetch(f'SELECT * FROM "{schema}".dead_letters WHERE id = ANY($1)', list(ids))
    by_id = {r["id"]: dict(r) for r in rows}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise DlqError(f"no dead letter {unknown[0]!r} (see `lendstream dlq list`)")
    return [by_id[i] for i in ids]


async def open_letters(
    conn: asyncpg.Connection, schema: str, topic: str | None
) -> list[dict[str, Any]]:
    """Every dead letter with status `dead` (of `topic`), in log order (for `replay --all`)."""
    rows = await conn.fetch(
        f"SELECT * FROM \"{schema}\".dead_letters WHERE status = 'dead' "
        'AND ($1::text IS NULL OR topic = $1) ORDER BY topic, partition, "offset"',
        topic,
    )
    return [dict(r) for r in rows]


def replay_requests(
    letters: Sequence[dict[str, Any]], corrected: dict[str, Any] | None, now: datetime
) -> list[Request]:
    """The replay commands for `letters` (pure). A corrected value (only for one letter) must be
    a valid event of the letter's topic and key; a letter whose own value is not a valid event
    can only be replayed with one."""
    if corrected is not None and len(letters) != 1:
        raise DlqError("a corrected value (--value-file) goes with exactly one dead letter")
    requests = []
    for letter in letters:
        _require_open(letter)
        spec = BY_NAME.get(letter["topic"])
        if spec is None:
            raise DlqError(f"{letter['id']}: topic {letter['topic']} takes no replays")
        if corrected is not None:
            decoded = spec.validate(corrected, letter["key"])
            if isinstance(decoded, Invalid):
                raise DlqError(f"the corrected value is not a valid event: {decoded.reason}")
        elif isinstance(spec.decode(_bytes(letter["key"]), letter["value"]), Invalid):
            raise DlqError(
                f"{letter['id']} is not a valid event ({letter['error_class']}); "
                "replay it with --value-file FILE holding a corrected value, or discard it"
            )
        data = {"dead_letter_id": letter["id"], "value": corrected}
        requests.append(_request(letter, "ReplayDeadLetter", data, now))
    return requests


def discard_requests(
    letters: Sequence[dict[str, Any]], reason: str, now: datetime
) -> list[Request]:
    """The discard commands for `letters` (pure)."""
    if not reason.strip():
        raise DlqError("a discard needs a --reason")
    for letter in letters:
        _require_open(letter)
    data = {"reason": reason.strip()}
    return [
        _request(x, "DiscardDeadLetter", {"dead_letter_id": x["id"], **data}, now) for x in letters
    ]


def _require_open(letter: dict[str, Any]) -> None:
    if letter["status"] not in OPEN:
        raise DlqError(f"{letter['id']} is already {letter['status']}")


def _bytes(text: str | None) -> bytes | None:
    return text.encode() if text is not None else None


def _request(letter: dict[str, Any], kind: str, data: dict[str, Any], now: datetime) -> Request:
    key = letter["key"] or ""
    return Request(letter["id"], key, letter["partition"], command(kind, key, data, now))


async def send(settings: Settings, requests: Sequence[Request]) -> None:
    """Produce `requests` to `loan-control`, in order, each to its dead letter's partition."""
    producer = settings_producer(settings)
    await producer.start()
    try:
        for r in requests:
            await producer.send_and_wait(
                CONTROL_TOPIC, value=r.value, key=r.key.encode(), partition=r.partition
            )
    finally:
        await producer.stop()


async def wait_for(
    conn: asyncpg.Connection, schema: str, before: Sequence[dict[str, Any]], timeout: float
) -> list[dict[str, Any]]:
    """The letters once each has changed since `before` (or as they are after `timeout`)."""
    deadline = time.monotonic() + timeout
    ids = [letter["id"] for letter in before]
    stamps = {letter["id"]: (letter["status"], letter["last_attempt_at"]) for letter in before}
    while True:
        now = await fetch_letters(conn, schema, ids)
        if all((x["status"], x["last_attempt_at"]) != stamps[x["id"]] for x in now):
            return now
        if time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.25)


def read_value_file(path: str) -> dict[str, Any]:
    """A corrected event from a JSON file; `DlqError` says what is wrong with it."""
    try:
        value = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise DlqError(f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise DlqError(f"{path} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DlqError(f"{path} holds a JSON {type(value).__name__}, not an event object")
    return value


def format_list(letters: Sequence[dict[str, Any]]) -> str:
    if not letters:
        return "no dead letters"
    cells = [[_cell(x[c], 60 if c == "error" else 40) for c in LIST_COLUMNS] for x in letters]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(LIST_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(LIST_COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def format_letter(letter: dict[str, Any]) -> str:
    shown = dict(letter)
    for name in ("value", "replayed_value"):
        raw = shown.get(name)
        shown[name] = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    width = max(len(k) for k in shown)
    return "\n".join(f"{k.ljust(width)}  {'' if v is None else v}" for k, v in shown.items())


def to_json(letters: Sequence[dict[str, Any]]) -> str:
    def default(value: object) -> object:
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        raise TypeError

    return orjson.dumps(list(letters), default=default, option=orjson.OPT_INDENT_2).decode()


def _cell(value: object, limit: int) -> str:
    if isinstance(value, datetime):
        text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    else:
        text = "" if value is None else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
