"""The wire codec: bytes on a topic <-> the tagged union of that topic's events.

`decode` never raises. Anything that is not a valid event of the topic comes back as `Invalid`
with an error class and a one-line, human-readable reason; the agent turns it into a dead
letter. Older `schema_version`s are upcast here, before validation, so the rest of the code only
ever sees the latest shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

import orjson
from pydantic import Field, TypeAdapter, ValidationError

from lendstream.topics.envelope import Event

MAX_VALUE_BYTES = 1024 * 1024

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message that is not a valid event: it goes to the dead letters, never to the domain."""

    error_class: str
    reason: str


#: PostgreSQL's `text` and `jsonb` cannot hold U+0000: an event with one could never be
#: written, and its batch would fail at every redelivery. It is a dead letter instead.
NUL_REASON = "a string holds a NUL character (\\u0000), which PostgreSQL cannot store"


def storable(text: str) -> str:
    """`text` with U+0000 replaced by U+FFFD, as PostgreSQL's `text` and `jsonb` can hold it.
    For what arrives beside an event's JSON (a record's key, its headers): any bytes can, and a
    dead letter that cannot be written would stop the worker at every redelivery."""
    return text.replace("\x00", "\ufffd")


def key_text(raw: bytes | None) -> str:
    """A record's key as text: invalid UTF-8 and NUL replaced by U+FFFD (a garbage key still
    identifies its dead letter, and can be stored), "" for none."""
    return storable(raw.decode("utf-8", "replace")) if raw is not None else ""


def holds_nul(value: Any) -> bool:
    """Whether a decoded JSON value has U+0000 in any string, object keys included."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_nul(item) for item in value)
    return False


def format_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """`data.amount_cents: Input should be greater than 0; …` — one line, fields first."""
    parts = []
    for error in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in error["loc"] if not _is_union_tag(p))
        parts.append(f"{loc}: {error['msg']}" if loc else error["msg"])
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and part[:1].isupper() and part.isidentifier()


@dataclass(frozen=True)
class TopicSpec:
    """One topic, declared once: its name, key field and events (contract §3)."""

    name: str
    key_field: str  # "loan_id" or "partner_id"
    events: tuple[type[Event], ...]
    upcasters: Mapping[tuple[str, int], Upcaster] = field(default_factory=dict)
    adapter: TypeAdapter[Any] = field(init=False, repr=False, compare=False)
    types: frozenset[str] = field(init=False, repr=False, compare=False)
    latest: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        union = Annotated[Union[self.events], Field(discriminator="type")]  # type: ignore[name-defined]  # noqa: UP007
        object.__setattr__(self, "adapter", TypeAdapter(union))
        latest = {
            e.model_fields["type"].annotation.__args__[0]: e.LATEST_SCHEMA_VERSION  # type: ignore[union-attr]
            for e in self.events
        }
        object.__setattr__(self, "latest", latest)
        object.__setattr__(self, "types", frozenset(latest))

    def decode(self, key: bytes | None, value: bytes | None) -> Event | Invalid:
        """Bytes to an event of this topic, or `Invalid` with the reason. Never raises."""
        if value is None:
            return Invalid("EmptyValue", "message has no value (tombstone)")
        if len(value) > MAX_VALUE_BYTES:
            return Invalid(
                "TooLarge", f"value is {len(value)} bytes, the limit is {MAX_VALUE_BYTES}"
            )
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Invalid("NotJson", f"value is not JSON: {exc}")
        return self.validate(obj, key, may_hold_nul=b"\\u0000" in value)

    def validate(
        self, obj: Any, key: bytes | str | None, may_hold_nul: bool = True
    ) -> Event | Invalid:
        """A decoded JSON value to an event, checking it against the Kafka `key`.
        `may_hold_nul=False` skips the search for NUL characters (the raw JSON has no
        `\\u0000`, the only way to write one)."""
        if not isinstance(obj, dict):
            return Invalid("NotAnObject", f"value is a JSON {type(obj).__name__}, not an object")
        if may_hold_nul and holds_nul(obj):
            return Invalid("ValidationError", NUL_REASON)
        kind = obj.get("type")
        if not isinstance(kind, str) or kind not in self.types:
            return Invalid("UnknownType", f"type: {kind!r} is not an event of {self.name}")
        version = obj.get("schema_version", 1)
        if type(version) is int and version > self.latest[kind]:  # before the shape is checked
            return Invalid(
                "ValidationError",
                f"schema_version: {version} is newer than this code knows ({self.latest[kind]})",
            )
        try:
            event: Event = self.adapter.validate_python(self._upcast(obj))
        except ValidationError as exc:
            return Invalid("ValidationError", format_validation_error(exc))
        except (TypeError, ValueError) as exc:  # an upcaster refused the value
            return Invalid("ValidationError", str(exc))
        expected = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if expected != event.key:
            return Invalid(
                "KeyMismatch",
                f"{self.key_field}: {event.key!r} does not equal the key {expected!r}",
            )
        return event

    def _upcast(self, obj: dict[str, Any]) -> dict[str, Any]:
        version = obj.get("schema_version", 1)
        while isinstance(version, int) and (upcaster := self.upcasters.get((obj["type"], version))):
            obj = upcaster(obj)
            version = obj.get("schema_version", version + 1)
        return obj

    @staticmethod
    def encode(event: Event) -> tuple[bytes, bytes]:
        """(key, value) bytes for producing `event` to this topic."""
        return event.key.encode(), encode_event(event)


def encode_event(event: Event) -> bytes:
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))
