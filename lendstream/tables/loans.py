"""The `loans` table: loan_id -> the loan's processing state (aggregate, applied ids, queue)
and its payout saga.

Changelog-backed RocksDB, co-partitioned with the loan-keyed topics; only the loan processor
writes it, and it replaces values (never mutates them). Values are JSON written by `encode`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import faust
import orjson

from lendstream import jsonbytes
from lendstream.domain.loans import Loan, LoanStatus
from lendstream.domain.sequencing import Keyed, Pending, Position
from lendstream.sagas.payout import PayoutSaga
from lendstream.settings import Settings
from lendstream.tables import store
from lendstream.topics import BY_NAME, Invalid

NAME = "loans"
_DATETIME_FIELDS = ("applied_at", "updated_at", "approved_at", "paid_out_at", "settled_at")
_SAGA_DATETIME_FIELDS = ("started_at", "updated_at", "deadline_at", "wake_at")


def declare(app: faust.App, settings: Settings) -> faust.Table:
    table = app.Table(
        NAME,
        partitions=settings.partitions,
        key_type=bytes,  # bytes types make Faust use the raw serializer
        value_type=bytes,
        options=store.options(settings),
        recovery_buffer_size=10_000,
        help="loan_id -> loan state, applied event ids and parked queue",
    )
    assert isinstance(table, faust.Table)  # what `app.Table` makes; typed as its protocol
    return table


def encode(keyed: Keyed[Loan], saga: PayoutSaga | None = None) -> bytes:
    value: dict[str, Any] = {
        "s": keyed.state,
        "a": sorted(keyed.applied),
        "q": [_pending_to_json(p) for p in keyed.queue],
        "n": keyed.seq,
    }
    if saga is not None:
        value["g"] = saga
    return jsonbytes.dumps(value)


def decode(raw: bytes | None) -> Keyed[Loan]:
    return decode_with_saga(raw)[0]


def decode_with_saga(raw: bytes | None) -> tuple[Keyed[Loan], PayoutSaga | None]:
    if raw is None:
        return Keyed(), None
    obj = orjson.loads(raw)
    keyed = Keyed(
        state=_loan_from_json(obj["s"]) if obj["s"] else None,
        applied=frozenset(obj["a"]),
        queue=tuple(_pending_from_json(p) for p in obj["q"]),
        seq=obj.get("n", 0),
    )
    saga = obj.get("g")
    return keyed, _saga_from_json(saga) if saga else None


def _saga_from_json(obj: dict[str, Any]) -> PayoutSaga:
    for name in _SAGA_DATETIME_FIELDS:
        if obj.get(name) is not None:
            obj[name] = datetime.fromisoformat(obj[name])
    return PayoutSaga(**obj)


def _loan_from_json(obj: dict[str, Any]) -> Loan:
    for name in _DATETIME_FIELDS:
        if obj.get(name) is not None:
            obj[name] = datetime.fromisoformat(obj[name])
    obj["status"] = LoanStatus(obj["status"])
    return Loan(**obj)


def _pending_to_json(p: Pending) -> dict[str, Any]:
    return {
        "pos": [p.position.topic, p.position.partition, p.position.offset],
        "event": p.event.model_dump(mode="json") if p.event else None,
        "status": p.status,
        "error_class": p.error_class,
        "error": p.error,
        "since": p.since,
        "needs": sorted(p.needs),
        "attempts": p.attempts,
        "retries": p.retries,
        "retry_at": p.retry_at,
        "replayed": p.replayed,
        "parked_at": p.parked_at,
    }


def _pending_from_json(obj: dict[str, Any]) -> Pending:
    topic, partition, offset = obj["pos"]
    event = None
    if obj["event"] is not None:
        decoded = BY_NAME[topic].validate(obj["event"], obj["event"].get("loan_id"))
        if isinstance(decoded, Invalid):  # pragma: no cover - written by us, validated before
            raise ValueError(f"stored event no longer validates: {decoded.reason}")
        event = decoded
    return Pending(
        position=Position(topic, partition, offset),
        event=event,
        status=obj["status"],
        error_class=obj["error_class"],
        error=obj["error"],
        since=datetime.fromisoformat(obj["since"]),
        needs=frozenset(obj["needs"]),
        attempts=obj.get("attempts", 1),
        retries=obj.get("retries", 0),
        retry_at=datetime.fromisoformat(obj["retry_at"]) if obj.get("retry_at") else None,
        replayed=obj.get("replayed", False),
        parked_at=datetime.fromisoformat(obj["parked_at"]) if obj.get("parked_at") else None,
    )
