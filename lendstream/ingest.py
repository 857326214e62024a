"""`POST /events/{topic}`: upstream systems send events over HTTP (contract §7).

The body is one envelope or a JSON array of up to `MAX_ITEMS` envelopes, at most
`MAX_BODY_BYTES`. All or nothing per request: every item is validated with the topic's codec
(the same `TopicSpec.validate` the loan processor decodes with) before anything is produced.
Every answer is one JSON object; a non-202 answer has an `error` line.

| status | when | body |
|---|---|---|
| 202 | every item is valid | `topic`, `ids` (request order), `produced`, `duplicates` |
| 400 | not JSON, not an object or array, an empty array | `error` |
| 401 | `LENDSTREAM_INGEST_TOKEN` is set and the bearer token is missing or wrong | `error` |
| 404 | not a topic upstream systems write (`loan-events`, `payment-events`, `treasury-events`) | `error`, `topics` |
| 413 | more than `MAX_BODY_BYTES` or more than `MAX_ITEMS` items | `error` |
| 422 | any item is invalid; nothing is produced | `error`, `errors`: `index`, `event_id`, `field`, `reason` |
| 503 | starting, PostgreSQL or the broker unavailable | `error` (and which ids did reach the topic) |

Keying and partitioning are a Kafka producer's: the key is the event's key (`loan_id`, or
`data.partner_id` on `treasury-events`) and the worker's Faust producer (aiokafka, acks=all,
murmur2 `DefaultPartitioner` — the same as `lendstream.producer` and `lendstream.client`)
picks the partition. The value is the item as sent, re-serialised: a consumer decodes exactly
what was validated, including its `schema_version`.

Idempotency by `event_id` — the guarantee, precisely:
- A request's ids are claimed in PostgreSQL (`ingest_accepted`) in a transaction that stays
  open while its new events are produced and acknowledged (acks=all), and commits after. A
  concurrent request with an overlapping id waits on that row and then treats it as a duplicate
  (or, if the first request failed, claims it itself). Ids are claimed in sorted order, so two
  requests cannot deadlock on each other.
- An id repeated within a request, or claimed by an earlier successful request, is answered as
  a duplicate and not produced again.
- If the broker refuses some events, the acknowledged ones stay claimed, the others are
  released, and the answer is 503 naming both: retrying the whole request produces only the
  missing ones.
- Not covered: a crash (or a lost PostgreSQL connection) after the broker acknowledged and
  before the claim committed releases the claims, so a retry produces those events a second
  time. That window is one commit long; the copies carry the same `event_id` and the loan
  processor applies an `event_id` once (contract §2), so the effect is still exactly once.
  Events produced to Kafka by other means are not in `ingest_accepted`; the same downstream
  rule covers them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
from aiokafka.structs import RecordMetadata

from lendstream.jsonbytes import dumps
from lendstream.security import postgres_dsn
from lendstream.topics import UPSTREAM, Event, Invalid, TopicSpec

if TYPE_CHECKING:
    import faust

    from lendstream.app import Runtime
    from lendstream.metrics import Metrics

log = logging.getLogger(__name__)

MAX_ITEMS = 1000
MAX_BODY_BYTES = 1024 * 1024
POOL_MAX = 2
READY_WAIT_SECONDS = 10.0
DRAIN_LIMIT_BYTES = 16 * MAX_BODY_BYTES
INGEST_TOPICS = {spec.name: spec for spec in UPSTREAM}
_FIELD = re.compile(r"^[A-Za-z_][\w.\-\[\]]*$")

#: Errors after which a retry can succeed: the connection, the server, a lost lock race.
POSTGRES_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.TransactionRollbackError,
)

Send = Callable[[str, bytes, bytes], Awaitable[Awaitable[RecordMetadata]]]


class Rejected(Exception):
    """A request that gets another answer than 202: `status` and a JSON body with `error`."""

    def __init__(self, status: int, error: str, **details: Any) -> None:
        super().__init__(error)
        self.status = status
        self.body: dict[str, Any] = {"error": error, **details}


@dataclass(frozen=True, slots=True)
class Item:
    """A valid event of the request, ready to produce."""

    index: int
    event: Event
    key: bytes
    value: bytes

    @property
    def event_id(self) -> str:
        return self.event.event_id


# -- pure: body, items, errors ----------------------------------------------------------------


def topic_spec(topic: str) -> TopicSpec:
    """The spec of an ingest topic; `Rejected(404)` for any other name."""
    spec = INGEST_TOPICS.get(topic)
    if spec is None:
        raise Rejected(404, f"no ingest topic {topic!r}", topics=sorted(INGEST_TOPICS))
    return spec


def authorized(authorization: str | None, token: str | None) -> bool:
    """True when ingest is open (no token) or `authorization` is `Bearer <token>`."""
    if token is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def parse_body(body: bytes) -> list[Any]:
    """The request's items: one envelope, or each element of an array."""
    if len(body) > MAX_BODY_BYTES:
        raise Rejected(413, f"body is {len(body)} bytes, the limit is {MAX_BODY_BYTES}")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejected(400, f"body is not JSON: {exc}") from None
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise Rejected(400, f"body is a JSON {type(value).__name__}: send an object or an array")
    if not value:
        raise Rejected(400, "body is an empty array: send at least one event")
    if len(value) > MAX_ITEMS:
        raise Rejected(413, f"{len(value)} events in one request, the limit is {MAX_ITEMS}")
    return value


def validate_items(spec: TopicSpec, items: Sequence[Any]) -> list[Item]:
    """Every item as an `Item`, or `Rejected(422)` listing the error of each invalid one."""
    valid: list[Item] = []
    errors: list[dict[str, Any]] = []
    for index, obj in enumerate(items):
        verdict = spec.validate(obj, claimed_key(spec, obj))
        if isinstance(verdict, Invalid):
            errors.extend(field_errors(index, obj, verdict))
        else:
            # kept until produced: `jsonbytes.dumps`, not orjson's 4 KiB buffer per event
            valid.append(Item(index, verdict, verdict.key.encode(), dumps(obj)))
    if errors:
        invalid = len({e["index"] for e in errors})
        raise Rejected(
            422,
            f"{invalid} of {len(items)} events are invalid; nothing was accepted",
            errors=errors,
        )
    return valid


def claimed_key(spec: TopicSpec, obj: Any) -> str | None:
    """The key the item names for itself (`loan_id`, or `data.partner_id`), so the codec's key
    check holds by construction: ingest derives the key, the client does not send one."""
    if not isinstance(obj, dict):
        return None
    data = obj.get("data")
    value = obj.get(spec.key_field, data.get(spec.key_field) if isinstance(data, dict) else None)
    return value if isinstance(value, str) else None


def field_errors(index: int, obj: Any, invalid: Invalid) -> list[dict[str, Any]]:
    """One `{index, event_id, field, reason}` per error in the codec's reason.

    The codec's reasons are one line of `field: message` parts joined by `; `
    (`codec.format_validation_error`); a part without a field (an envelope-level rule) has
    `field: null`.
    """
    event_id = obj.get("event_id") if isinstance(obj, dict) else None
    parts = (
        invalid.reason.split("; ") if invalid.error_class == "ValidationError" else [invalid.reason]
    )
    out = []
    for part in parts:
        name, sep, message = part.partition(": ")
        if not (sep and _FIELD.match(name)):
            name, message = None, part  # type: ignore[assignment]
        out.append({
            "index": index,
            "event_id": event_id if isinstance(event_id, str) else None,
            "field": name,
            "reason": message,
            "error_class": invalid.error_class,
        })  # fmt: skip
    return out


def first_seen(items: Sequence[Item]) -> tuple[list[Item], list[str]]:
    """Items with an `event_id` not seen earlier in the request, and the repeated ids."""
    seen: set[str] = set()
    fresh, repeated = [], []
    for item in items:
        if item.event_id in seen:
            repeated.append(item.event_id)
        else:
            seen.add(item.event_id)
            fresh.append(item)
    return fresh, repeated


# -- I/O: claims in PostgreSQL, produce ---------------------------------------------------------


@dataclass
class Ingest:
    """Validates, claims, produces. `pool` is set once PostgreSQL is migrated."""

    schema: str
    token: str | None
    send: Send
    metrics: Metrics
    pool: asyncpg.Pool | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _sql: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        table = f'"{self.schema}".ingest_accepted'
        self._sql = {
            "claim": f"INSERT INTO {table} (event_id, topic) "
            "SELECT id, $2 FROM unnest($1::text[]) AS id ORDER BY id "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            "record": f'UPDATE {table} AS a SET partition = p.partition, "offset" = p.off '
            "FROM unnest($1::text[], $2::int[], $3::bigint[]) AS p(event_id, partition, off) "
            "WHERE a.event_id = p.event_id",
            "release": f"DELETE FROM {table} WHERE event_id = ANY($1::text[])",
        }

    async def handle(self, topic: str, authorization: str | None, body: bytes) -> dict[str, Any]:
        """The 202 body for a request, or `Rejected` with the answer."""
        if not authorized(authorization, self.token):
            raise Rejected(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        spec = topic_spec(topic)
        try:
            items = validate_items(spec, parse_body(body))
        except Rejected as rejected:
            invalid = {e["index"] for e in rejected.body.get("errors", ())}
            self.metrics.ingest_events.labels(topic, "invalid").inc(len(invalid))
            raise
        try:
            await asyncio.wait_for(self.connected.wait(), READY_WAIT_SECONDS)
        except TimeoutError:
            raise Rejected(503, "starting: not connected to PostgreSQL yet; retry") from None
        fresh, repeated = first_seen(items)
        produced, taken = await self.produce_new(spec.name, fresh)
        self.metrics.ingest_events.labels(topic, "produced").inc(len(produced))
        self.metrics.ingest_events.labels(topic, "duplicate").inc(len(repeated) + len(taken))
        return {
            "topic": spec.name,
            "ids": [item.event_id for item in items],
            "produced": len(produced),
            "duplicates": sorted(set(repeated) | set(taken)),
        }

    async def produce_new(self, topic: str, items: list[Item]) -> tuple[list[str], list[str]]:
        """Produce the items whose id nobody has claimed; returns (produced ids, taken ids)."""
        assert self.pool is not None
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                ids = [item.event_id for item in items]
                claimed = await conn.fetch(self._sql["claim"], ids, topic)
                new = {r["event_id"] for r in claimed}
                results = await produce(self.send, topic, [i for i in items if i.event_id in new])
                done = {i: m for i, m in results.items() if isinstance(m, RecordMetadata)}
                failed = [i for i, m in results.items() if not isinstance(m, RecordMetadata)]
                await conn.execute(
                    self._sql["record"],
                    list(done),
                    [m.partition for m in done.values()],
                    [m.offset for m in done.values()],
                )
                if failed:
                    await conn.execute(self._sql["release"], failed)
        except POSTGRES_UNAVAILABLE as exc:
            raise Rejected(503, f"PostgreSQL unavailable, nothing was accepted: {exc}") from None
        if failed:
            reason = next(str(m) for m in results.values() if not isinstance(m, RecordMetadata))
            raise Rejected(
                503,
                f"the broker did not take {len(failed)} events ({reason}); retry the request: "
                "events that did reach the topic are not produced again",
                produced=sorted(done),
                failed=sorted(failed),
            )
        return list(done), [i for i in ids if i not in new]


async def produce(
    send: Send, topic: str, items: Sequence[Item]
) -> dict[str, RecordMetadata | BaseException]:
    """Send every item (all in flight at once) and wait for each acknowledgement or error."""
    pending: dict[str, Awaitable[RecordMetadata]] = {}
    results: dict[str, RecordMetadata | BaseException] = {}
    for item in items:
        try:
            pending[item.event_id] = await send(topic, item.key, item.value)
        except Exception as exc:  # e.g. no metadata for the topic: this item failed
            results[item.event_id] = exc
    outcomes = await asyncio.gather(*pending.values(), return_exceptions=True)
    results.update(zip(pending, outcomes, strict=True))
    return results


# -- the web view ---------------------------------------------------------------------------------


async def read_body(content_length: int | None, chunks: Any) -> bytes:
    """The body, or `Rejected(413)` when it is over `MAX_BODY_BYTES`.

    An oversized body is still read (and dropped) up to `DRAIN_LIMIT_BYTES`, so that an
    ordinary client, still writing it, gets to read the 413; beyond that the answer comes at
    once and the connection closes.
    """
    too_large = Rejected(413, f"body is over {MAX_BODY_BYTES} bytes, the limit")
    if content_length is not None and content_length > DRAIN_LIMIT_BYTES:
        raise too_large
    body = bytearray()
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > DRAIN_LIMIT_BYTES:
            break
        if size <= MAX_BODY_BYTES:
            body += chunk
    if size > MAX_BODY_BYTES:
        raise too_large
    return bytes(body)


def register(app: faust.App, runtime: Runtime) -> Ingest:
    """Serve `POST /events/{topic}` on the worker's web port."""
    from faust.web import Request, Response, View

    settings = runtime.settings
    ingest = Ingest(
        schema=settings.pg_schema,
        token=settings.ingest_token,
        send=lambda topic, key, value: app.producer.send(topic, key, value, None, None, None),
        metrics=runtime.metrics,
    )

    @app.task
    async def connect_ingest() -> None:
        await runtime.ready.wait()  # the schema is migrated
        while ingest.pool is None:
            try:
                ingest.pool = await asyncpg.create_pool(  # no floor: see app.connect_postgres
                    postgres_dsn(settings), min_size=0, max_size=POOL_MAX
                )
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("ingest: PostgreSQL unavailable (%s); retrying", exc)
                await asyncio.sleep(1.0)
        ingest.connected.set()

    @app.page("/events/{topic}")
    class EventsView(View):
        async def post(self, request: Request, topic: str) -> Response:
            status, body, headers = 202, {}, {}
            try:
                raw = await read_body(request.content_length, request.content.iter_chunked(65536))  # type: ignore[attr-defined]
                body = await ingest.handle(topic, request.headers.get("Authorization"), raw)
            except Rejected as rejected:
                status, body = rejected.status, rejected.body
                if status == 401:
                    headers = {"WWW-Authenticate": 'Bearer realm="lendstream ingest"'}
            except Exception:
                log.exception("ingest to %s failed", topic)
                status, body = 500, {"error": "internal error; the worker log has the details"}
            label = topic if topic in INGEST_TOPICS else "unknown"
            runtime.metrics.ingest_requests.labels(label, str(status)).inc()
            return self.bytes(
                orjson.dumps(body), content_type="application/json", status=status, headers=headers
            )

    return ingest
