"""Schema evolution: reading an older `schema_version` of an event as the current one.

The codec runs `TopicSpec.upcasters[(type, version)]` on a JSON object of that version before
validation, until the version has no upcaster (contract §2: "older versions are upcast on
read"). `ModelUpcaster` is such an upcaster that first validates the object with the old
version's own frozen model — so an invalid old message is reported in the field names its
producer used — and then converts the validated old event into the next version's JSON. It
carries the old model as `.model`, from which `lendstream schema export` publishes the old
version's JSON Schema.

To evolve an event type: copy its model as `<Type>V<n>` (frozen from then on), change the
current model and raise its `LATEST_SCHEMA_VERSION`, and register
`ModelUpcaster(<Type>V<n>, convert)` under `(type, n)` in the topic's upcasters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lendstream.topics.envelope import Event


@dataclass(frozen=True)
class ModelUpcaster:
    """Validates a JSON object as `model` (an old version), then `convert`s it to the next."""

    model: type[Event]
    convert: Callable[[Any], dict[str, Any]]

    def __call__(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The next version's JSON object; raises pydantic's `ValidationError` (a
        `ValueError`) when `obj` is not a valid event of the old version."""
        return self.convert(self.model.model_validate(obj))
