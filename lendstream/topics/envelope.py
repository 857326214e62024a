"""The event envelope of contract §2 and the field types every event shares.

Models are frozen and strict: unknown fields (in the envelope or in `data`), wrong types,
non-positive amounts, unknown currencies and a `schema_version` newer than the code knows are
rejected. `occurred_at` must be an RFC 3339 timestamp with an offset.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from lendstream.topics.currencies import ISO_4217

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
MAX_CENTS = 10**15


def _rfc3339(value: Any) -> datetime:
    """An RFC 3339 timestamp with an offset (`Z`/`z` or `±HH:MM`), parsed to an aware datetime;
    fractions beyond microseconds are truncated. Anything else is a `ValueError`, as is an
    instant before year 1 or after 9999 in UTC (PostgreSQL would store it, but it could not be
    read back). (On the hot path: one regex match, at most one replace, `fromisoformat`.)"""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamp needs a UTC offset")
        return _in_range(value)
    if not isinstance(value, str) or not (match := _RFC3339.match(value)):
        raise ValueError("expected an RFC 3339 timestamp with offset, e.g. 2026-01-31T12:00:00Z")
    fraction = match.group(1)
    if fraction is not None and len(fraction) > 7:  # "." + digits: Python keeps microseconds
        value = value.replace(fraction, fraction[:7], 1)
    if value[-1] == "z":
        value = value[:-1] + "Z"
    return _in_range(datetime.fromisoformat(value))


def _in_range(value: datetime) -> datetime:
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp is outside years 1-9999 in UTC") from None
    return value


def _iso_currency(value: str) -> str:
    if value not in ISO_4217:
        raise ValueError(f"unknown currency {value!r} (ISO 4217 code expected)")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]
Currency = Annotated[str, AfterValidator(_iso_currency)]
Cents = Annotated[int, Field(gt=0, le=MAX_CENTS)]
NonNegativeCents = Annotated[int, Field(ge=0, le=MAX_CENTS)]
Identifier = Annotated[str, Field(min_length=1, max_length=200)]
Reason = Annotated[str, Field(min_length=1, max_length=2000)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Event(Strict):
    """Fields every event carries. Subclasses add `type` (a Literal) and `data`."""

    LATEST_SCHEMA_VERSION: ClassVar[int] = 1

    event_id: Identifier
    type: str
    schema_version: int = Field(default=1, ge=1)
    occurred_at: Timestamp
    correlation_id: Identifier | None = None
    causation_id: Identifier | None = None

    @model_validator(mode="after")
    def _known_version(self) -> Event:
        if self.schema_version > self.LATEST_SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is newer than this code knows "
                f"({self.LATEST_SCHEMA_VERSION})"
            )
        return self

    @property
    def key(self) -> str:
        """The Kafka key this event must carry."""
        raise NotImplementedError


class LoanEvent(Event):
    """An event on a loan-keyed topic: `loan_id` is required and equals the Kafka key."""

    loan_id: Identifier

    @property
    def key(self) -> str:
        return self.loan_id
