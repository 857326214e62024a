"""Event schemas as artefacts: a JSON Schema per event type and version, and an AsyncAPI 3.0
document of all topics, generated from the pydantic models in `lendstream.topics`.

`lendstream schema export [--out docs/schemas]` writes them; a test regenerates them and
compares with the copies committed in `docs/schemas/`, so the documents never drift from the
code.

What a schema checks is what the codec checks, with these exceptions (the codec is the
authority; a schema is for producers' tooling): a schema cannot say that `loan_id` (or
`data.partner_id` on `treasury-events`) must equal the Kafka key; its `occurred_at` pattern
checks the RFC 3339 shape but not the calendar (`2026-02-30` passes); and JSON Schema counts
`100.0` as an integer where the codec wants `100`.

Versions: every event type is exported in its current `schema_version`
(`LATEST_SCHEMA_VERSION`) and in each older version the codec still reads, found through the
topic's upcasters: an upcaster that carries the old version's model as `.model` (see
`lendstream.topics.upcast`, proposed in issue 7) exports that model too.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from lendstream.topics import ALL, UPSTREAM, Event, TopicSpec
from lendstream.topics.currencies import ISO_4217
from lendstream.topics.envelope import _RFC3339, _iso_currency, _rfc3339

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
EVENTS_DIR = "events"
ASYNCAPI_FILE = "asyncapi.json"
KAFKA_BINDING_VERSION = "0.5.0"

#: Contract §2, for the envelope fields' descriptions.
ENVELOPE_DOCS = {
    "event_id": "Unique; a second message with the same event_id is a duplicate and changes "
    "nothing.",
    "type": "The event type.",
    "schema_version": "The version of this event type's shape; older versions are upcast on "
    "read, newer ones than the code knows are invalid.",
    "occurred_at": "When it happened: RFC 3339 with a UTC offset, e.g. 2026-01-31T12:00:00Z.",
    "loan_id": "The loan; equals the Kafka key on loan-keyed topics.",
    "correlation_id": "Carried onto every event the system derives from this one.",
    "causation_id": "The event that caused this one.",
    "data": "The type's fields. Amounts are integer minor units (*_cents) and positive unless "
    "stated; currencies are ISO 4217 codes.",
}

#: One valid example per event type and version (they are the contract's examples: a test
#: checks each against its JSON Schema and the codec).
EXAMPLES: dict[tuple[str, int], dict[str, Any]] = {}


def _example(kind: str, loan_id: str | None, data: dict[str, Any], version: int = 1) -> None:
    event: dict[str, Any] = {
        "event_id": f"3f0c2a4e-{len(EXAMPLES):04d}-4b7e-9d1a-5c8e2f6b1a90",
        "type": kind,
        "schema_version": version,
        "occurred_at": "2026-01-31T12:00:00Z",
    }
    if loan_id is not None:
        event["loan_id"] = loan_id
    event["correlation_id"] = f"loan:{loan_id}" if loan_id else "treasury:2026-01"
    EXAMPLES[(kind, version)] = {**event, "data": data}


_L, _P, _PAYOUT = "L-20260131-0001", "P-acme", "payout:L-20260131-0001"
_example("LoanApplied", _L, {"customer_id": "C-0042", "partner_id": _P, "amount_cents": 500_000,
                             "currency": "EUR", "term_months": 12})  # fmt: skip
# schema_version 2 of LoanApplied (amount_cents renamed requested_amount_cents; see
# docs/proposals/loan-applied-v2-upcast.patch): used once the code knows that version.
_example("LoanApplied", _L, {"customer_id": "C-0042", "partner_id": _P,
                             "requested_amount_cents": 500_000, "currency": "EUR",
                             "term_months": 12}, version=2)  # fmt: skip
_example("LoanApproved", _L, {"approved_amount_cents": 450_000, "interest_rate_bps": 750})
_example("LoanRejected", _L, {"reason": "affordability check failed"})
_example("LoanCanceled", _L, {"reason": "customer withdrew"})
_example("RepaymentReceived", _L, {"payment_id": "pay-0001", "amount_cents": 40_313,
                                   "currency": "EUR"})  # fmt: skip
_example("CreditLineSet", None, {"partner_id": _P, "currency": "EUR", "limit_cents": 50_000_000})
_example("PayoutRequested", _L, {"payout_id": _PAYOUT, "partner_id": _P, "amount_cents": 450_000,
                                 "currency": "EUR"})  # fmt: skip
_example("FundsReserved", _L, {"payout_id": _PAYOUT, "partner_id": _P, "amount_cents": 450_000})
_example("FundsReservationFailed", _L, {"payout_id": _PAYOUT, "partner_id": _P,
                                        "reason": "credit line exhausted"})  # fmt: skip
_example("PayoutSent", _L, {"payout_id": _PAYOUT})
_example("PayoutFailed", _L, {"payout_id": _PAYOUT, "reason": "account closed"})
_example("FundsReleased", _L, {"payout_id": _PAYOUT, "partner_id": _P, "amount_cents": 450_000})
_example("LoanPaidOut", _L, {"payout_id": _PAYOUT, "amount_cents": 450_000, "currency": "EUR"})
_example("ReplayDeadLetter", _L, {"dead_letter_id": "loan-events:3:1042"})
_example("DiscardDeadLetter", _L, {"dead_letter_id": "loan-events:3:1042",
                                   "reason": "duplicate sent by origination"})  # fmt: skip
_example("FireTimers", _L, {})
_example(
    "GatewayAnswered",
    _L,
    {"attempt": 1, "kind": "transient", "reason": "gateway answered HTTP 503"},
)


@dataclass(frozen=True)
class EventVersion:
    """One event type in one schema_version, on its topic."""

    spec: TopicSpec
    name: str
    version: int
    model: type[Event]

    @property
    def id(self) -> str:
        return f"{self.name}.v{self.version}"

    @property
    def latest(self) -> bool:
        return self.version == self.model.LATEST_SCHEMA_VERSION


def event_versions() -> list[EventVersion]:
    """Every (event type, version) the codec reads, by topic, type and version."""
    found: list[EventVersion] = []
    for spec in ALL:
        for model in spec.events:
            name = model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
            found.append(EventVersion(spec, name, model.LATEST_SCHEMA_VERSION, model))
        for (name, version), upcaster in spec.upcasters.items():
            old_model = getattr(upcaster, "model", None)
            if old_model is not None:
                found.append(EventVersion(spec, name, version, old_model))
    return sorted(found, key=lambda v: (v.spec.name, v.name, v.version))


class _Generator(GenerateJsonSchema):
    """pydantic's generator, plus what our custom validators check: the RFC 3339 shape of a
    timestamp and the ISO 4217 list of a currency."""

    def function_before_schema(
        self, schema: core_schema.BeforeValidatorFunctionSchema
    ) -> JsonSchemaValue:
        if schema["function"]["function"] is _rfc3339:
            return {"type": "string", "format": "date-time", "pattern": _RFC3339.pattern}
        return super().function_before_schema(schema)

    def function_after_schema(
        self, schema: core_schema.AfterValidatorFunctionSchema
    ) -> JsonSchemaValue:
        inner = super().function_after_schema(schema)
        if schema["function"]["function"] is _iso_currency:
            return {**inner, "enum": sorted(ISO_4217)}
        return inner


def payload_schema(event: EventVersion) -> dict[str, Any]:
    """The event's JSON Schema, self-contained (no `$ref`), without `$schema`."""
    raw = event.model.model_json_schema(mode="validation", schema_generator=_Generator)
    schema = _inline(raw, raw.get("$defs", {}))
    schema.pop("$defs", None)
    _drop_titles(schema)
    props = schema["properties"]
    for name, doc in ENVELOPE_DOCS.items():
        if name in props:
            props[name]["description"] = doc
    props["schema_version"] = {
        "const": event.version,
        "description": ENVELOPE_DOCS["schema_version"],
    }
    if event.version == 1:
        props["schema_version"]["default"] = 1
    elif "schema_version" not in schema["required"]:
        schema["required"].insert(1, "schema_version")
    key_note = (
        "the Kafka key is loan_id"
        if event.spec.key_field == "loan_id"
        else "the Kafka key is data.partner_id"
    )
    return {
        "title": f"{event.name} (schema_version {event.version})",
        "description": f"{event.name} on topic {event.spec.name}; {key_note}. "
        + ("The current version." if event.latest else "An older version, still read (upcast)."),
        **schema,
    }


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = copy.deepcopy(defs[ref.removeprefix("#/$defs/")])
            return _inline({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _drop_titles(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("title", None)
        for value in node.values():
            _drop_titles(value)
    elif isinstance(node, list):
        for value in node:
            _drop_titles(value)


def json_schema(event: EventVersion) -> dict[str, Any]:
    """The standalone JSON Schema document (draft 2020-12) of one event type and version."""
    return {"$schema": JSON_SCHEMA_DIALECT, **payload_schema(event)}


def asyncapi_document() -> dict[str, Any]:
    """An AsyncAPI 3.0 document of every event topic, from lendstream's point of view: it
    receives the upstream topics and sends (and receives) `payout-events`."""
    events = event_versions()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in ALL:
        ids = [e.id for e in events if e.spec is spec]
        channels[spec.name] = {
            "address": spec.name,
            "title": spec.name,
            "description": f"Kafka topic {spec.name}, keyed by {_key_path(spec)}. "
            + (
                "Written by upstream systems (or POST /events/{topic})."
                if spec in UPSTREAM
                else "Written by lendstream (the payout saga)."
            ),
            "messages": {i: {"$ref": f"#/components/messages/{i}"} for i in ids},
            "bindings": {"kafka": {"topic": spec.name, "bindingVersion": KAFKA_BINDING_VERSION}},
        }
        message_refs = [{"$ref": f"#/channels/{spec.name}/messages/{i}"} for i in ids]
        channel_ref = {"$ref": f"#/channels/{spec.name}"}
        operations[f"receive-{spec.name}"] = {
            "action": "receive",
            "channel": channel_ref,
            "summary": f"lendstream consumes {spec.name}.",
            "messages": message_refs,
        }
        if spec not in UPSTREAM:
            operations[f"send-{spec.name}"] = {
                "action": "send",
                "channel": channel_ref,
                "summary": f"lendstream produces {spec.name}.",
                "messages": message_refs,
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "lendstream events",
            "version": metadata.version("lendstream"),
            "description": "The topics and event envelopes of lendstream's public contract "
            "(§2, §3). Every message value is one JSON object (UTF-8). Generated from the "
            "pydantic models by `lendstream schema export`.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {e.id: _message(e) for e in events},
            "schemas": {e.id: payload_schema(e) for e in events},
        },
    }


def _key_path(spec: TopicSpec) -> str:
    return spec.key_field if spec.key_field == "loan_id" else f"data.{spec.key_field}"


def _message(event: EventVersion) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": event.name,
        "title": f"{event.name} v{event.version}",
        "summary": f"{event.name}, schema_version {event.version}, on {event.spec.name}.",
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{event.id}"},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": f"the event's {_key_path(event.spec)}"},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }
    example = EXAMPLES.get((event.name, event.version))
    if example is not None:
        message["examples"] = [{"name": f"{event.name}-v{event.version}", "payload": example}]
    return message


def rendered() -> dict[str, str]:
    """Every artefact as (relative path, file text): what `export` writes."""
    files = {
        f"{EVENTS_DIR}/{event.id}.schema.json": _dump(json_schema(event))
        for event in event_versions()
    }
    files[ASYNCAPI_FILE] = _dump(asyncapi_document())
    return files


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def export(out: Path) -> list[Path]:
    """Write the artefacts under `out`, removing schema files no longer generated."""
    files = rendered()
    (out / EVENTS_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (out / EVENTS_DIR).glob("*.schema.json"):
        if f"{EVENTS_DIR}/{stale.name}" not in files:
            stale.unlink()
    written = []
    for relative, text in files.items():
        path = out / relative
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def iter_examples() -> Iterator[tuple[EventVersion, dict[str, Any]]]:
    """(event version, example) for every version that has an example."""
    for event in event_versions():
        example = EXAMPLES.get((event.name, event.version))
        if example is not None:
            yield event, example
