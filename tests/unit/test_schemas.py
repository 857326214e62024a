"""Exported schemas (issue 7): in sync with docs/, checked with an independent validator
(`jsonschema`), agreeing with the codec on the contract's examples and their invalid variants,
and an AsyncAPI document that the official AsyncAPI 3.0 JSON Schema accepts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lendstream.cli import main
from lendstream.ingest import claimed_key
from lendstream.schemas import (
    ASYNCAPI_FILE,
    EVENTS_DIR,
    EventVersion,
    asyncapi_document,
    event_versions,
    iter_examples,
    json_schema,
    rendered,
)
from lendstream.topics import ALL, Event, Invalid

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "schemas"
ASYNCAPI_SCHEMA = ROOT / "tests" / "vendor" / "asyncapi" / "3.0.0-without-id.json"
EXAMPLES = list(iter_examples())
IDS = [event.id for event, _ in EXAMPLES]


def validator(event: EventVersion) -> jsonschema.protocols.Validator:
    schema = json_schema(event)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def codec_accepts(event: EventVersion, value: Any) -> bool:
    """The codec's verdict, with the key the event names for itself (as ingest does)."""
    return isinstance(event.spec.validate(value, claimed_key(event.spec, value)), Event)


# -- in sync with docs/ --------------------------------------------------------------------------


def test_committed_schemas_are_what_the_code_generates() -> None:
    committed = {
        str(p.relative_to(DOCS)): p.read_text(encoding="utf-8")
        for p in [DOCS / ASYNCAPI_FILE, *sorted((DOCS / EVENTS_DIR).glob("*.json"))]
        if p.exists()
    }
    generated = rendered()
    stale = "docs/schemas is out of date: run `lendstream schema export` and commit the result"
    assert sorted(committed) == sorted(generated), stale
    for path, text in generated.items():
        assert committed[path] == text, f"{path}: {stale}"


def test_every_event_type_of_every_topic_is_exported_with_an_example() -> None:
    exported = {(e.spec.name, e.name) for e in event_versions()}
    assert exported == {(spec.name, name) for spec in ALL for name in spec.types}
    assert {e.id for e in event_versions()} == set(IDS)


def test_export_command_writes_the_artefacts(tmp_path: Path) -> None:
    assert main(["schema", "export", "--out", str(tmp_path / "out")]) == 0
    for path, text in rendered().items():
        assert (tmp_path / "out" / path).read_text(encoding="utf-8") == text


def test_export_to_a_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    assert main(["schema", "export", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err


# -- the contract's examples and their invalid variants ----------------------------------------


@pytest.mark.parametrize(("event", "example"), EXAMPLES, ids=IDS)
def test_examples_are_valid_for_the_schema_and_the_codec(
    event: EventVersion, example: dict[str, Any]
) -> None:
    validator(event).validate(example)
    assert codec_accepts(event, example)
    minimal = {k: v for k, v in example.items() if k not in ("correlation_id", "causation_id")}
    if event.version == 1:
        del minimal["schema_version"]  # optional in version 1
    validator(event).validate(minimal)
    assert codec_accepts(event, minimal)


def invalid_variants(event: EventVersion, example: dict[str, Any]) -> list[tuple[str, Any]]:
    """(what, value) pairs that the contract (§2, §3) calls invalid."""
    out: list[tuple[str, Any]] = []

    def variant(what: str, change: Any) -> None:
        value = copy.deepcopy(example)
        change(value)
        out.append((what, value))

    variant("unknown envelope field", lambda v: v.update(priority="high"))
    variant("unknown data field", lambda v: v["data"].update(note="hi"))
    for name in ("event_id", "type", "occurred_at", "data", "loan_id"):
        if name in example:
            variant(f"no {name}", lambda v, n=name: v.pop(n))
    for name in example["data"]:
        variant(f"no data.{name}", lambda v, n=name: v["data"].pop(n))
    newer = event.model.LATEST_SCHEMA_VERSION + 1
    variant("newer schema_version", lambda v: v.update(schema_version=newer))
    variant("schema_version 0", lambda v: v.update(schema_version=0))
    variant("schema_version as text", lambda v: v.update(schema_version="1"))
    variant("occurred_at without offset", lambda v: v.update(occurred_at="2026-01-31T12:00:00"))
    variant("occurred_at as a number", lambda v: v.update(occurred_at=1769860800))
    variant("another type", lambda v: v.update(type="LoanExploded"))
    variant("empty event_id", lambda v: v.update(event_id=""))
    variant("data not an object", lambda v: v.update(data=[]))
    for name, value in example["data"].items():
        if name.endswith("_cents"):
            bad = -1 if name == "limit_cents" else 0
            variant(f"data.{name} = {bad}", lambda v, n=name, b=bad: v["data"].update({n: b}))
            variant(f"data.{name} as text", lambda v, n=name: v["data"].update({n: "100"}))
            variant(f"data.{name} too large", lambda v, n=name: v["data"].update({n: 10**15 + 1}))
        if name == "currency":
            variant("unknown currency", lambda v: v["data"].update(currency="XYZ"))
            variant("lower-case currency", lambda v: v["data"].update(currency="eur"))
        if isinstance(value, str):
            variant(f"empty data.{name}", lambda v, n=name: v["data"].update({n: ""}))
    if event.spec.key_field != "loan_id":
        variant("loan_id on a partner-keyed topic", lambda v: v.update(loan_id="L1"))
    return out


INVALID = [
    (event, what, value)
    for event, example in EXAMPLES
    for what, value in invalid_variants(event, example)
]


@pytest.mark.parametrize(
    ("event", "what", "value"), INVALID, ids=[f"{e.id}: {w}" for e, w, _ in INVALID]
)
def test_invalid_variants_are_rejected_by_the_schema_and_the_codec(
    event: EventVersion, what: str, value: Any
) -> None:
    errors = list(validator(event).iter_errors(value))
    assert errors, f"the JSON Schema accepts {what}"
    assert not codec_accepts(event, value), f"the codec accepts {what}"


def test_documented_differences_between_schema_and_codec() -> None:
    """What a JSON Schema cannot say (see lendstream/schemas.py): both are listed so that a
    change in either shows up here."""
    event, example = next((e, x) for e, x in EXAMPLES if e.name == "LoanApplied")
    no_such_day = {**example, "occurred_at": "2026-02-30T12:00:00Z"}
    float_amount = {**example, "data": {**example["data"], "amount_cents": 500000.0}}
    for value in (no_such_day, float_amount):
        assert not list(validator(event).iter_errors(value))
        assert not codec_accepts(event, value)
    wrong_key = event.spec.validate(example, "another-loan")
    assert isinstance(wrong_key, Invalid) and wrong_key.error_class == "KeyMismatch"


# -- AsyncAPI --------------------------------------------------------------------------------


def asyncapi_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.validators.validator_for(schema)(schema)


def test_the_asyncapi_document_is_valid_asyncapi_3() -> None:
    document = asyncapi_document()
    errors = [
        f"{list(e.absolute_path)}: {e.message[:200]}"
        for e in asyncapi_validator().iter_errors(document)
    ]
    assert errors == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d.update(asyncapi="2.6.0"),
        lambda d: d["info"].pop("title"),
        lambda d: d["channels"]["loan-events"].update(address=7),
        lambda d: d["operations"]["receive-loan-events"].update(action="consume"),
        lambda d: d["components"]["messages"]["LoanApplied.v1"].update(contentType=["json"]),
        lambda d: d.update(topics={}),
    ],
)
def test_the_asyncapi_validator_rejects_broken_documents(breakage: Any) -> None:
    document = asyncapi_document()
    breakage(document)
    assert list(asyncapi_validator().iter_errors(document))


def test_asyncapi_messages_carry_their_schema_key_and_example() -> None:
    document = asyncapi_document()
    messages = document["components"]["messages"]
    schemas = document["components"]["schemas"]
    for spec in ALL:
        channel = document["channels"][spec.name]
        assert channel["address"] == spec.name
        for message_id in channel["messages"]:
            message = messages[message_id]
            payload = schemas[message["payload"]["$ref"].rsplit("/", 1)[1]]
            assert message["name"] in spec.types
            assert message["bindings"]["kafka"]["key"]["type"] == "string"
            for example in message["examples"]:
                jsonschema.Draft7Validator(payload).validate(example["payload"])
    receive = {
        op["channel"]["$ref"] for op in document["operations"].values() if op["action"] == "receive"
    }
    assert receive == {f"#/channels/{spec.name}" for spec in ALL}
