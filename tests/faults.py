"""A fake at the edge of pure logic: an `evolve` whose external part fails transiently.

The loan fold itself never does I/O, but the sequencing treats any `Transient` from the fold as
an external failure (the payout saga's gateway call is the real one). `FlakyEvolve` makes the
first N attempts of chosen events fail with `Transient`, so the retry machinery can be tested
end to end — on a real broker and PostgreSQL — without a gateway.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Generic, TypeVar

from lendstream.domain.errors import Transient
from lendstream.domain.sequencing import Evolve
from lendstream.topics.envelope import Event

S = TypeVar("S")


class FlakyEvolve(Generic[S]):
    """`evolve`, except that event `i` fails transiently on its first `failures[i]` attempts."""

    def __init__(self, evolve: Evolve[S], failures: Mapping[str, int]) -> None:
        self.evolve = evolve
        self.failures = dict(failures)
        self.attempts: Counter[str] = Counter()

    def __call__(self, state: S | None, event: Event) -> S:
        self.attempts[event.event_id] += 1
        if self.attempts[event.event_id] <= self.failures.get(event.event_id, 0):
            raise Transient(
                f"simulated outage {self.attempts[event.event_id]} for {event.event_id}"
            )
        return self.evolve(state, event)
