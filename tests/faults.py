"""A fake at the edge of pure logic: an `evolve` whose external part fails transiently.

The loan fold itself never does I/O, but the sequencing treats any `Transient` from the fold as
an external failure (the payout saga's gateway call is the real one). `FlakyEvolve` makes the
first N attempts of chosen events fail with `Transient`, so the retry machinery can be tested
end to end — on a real broker and PostgreSQL — without a gateway.

With a `ledger` directory the attempts are counted there (one file per event, a byte per
attempt), across worker processes: an event then fails exactly its first N attempts however
often the worker is killed and restarted, which keeps a crash test's end state fixed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Generic, TypeVar

from lendstream.domain.errors import Transient
from lendstream.domain.sequencing import Evolve
from lendstream.topics.envelope import Event

S = TypeVar("S")


class FlakyEvolve(Generic[S]):
    """`evolve`, except that event `i` fails transiently on its first `failures[i]` attempts."""

    def __init__(
        self, evolve: Evolve[S], failures: Mapping[str, int], ledger: Path | None = None
    ) -> None:
        self.evolve = evolve
        self.failures = dict(failures)
        self.ledger = ledger
        self.attempts: Counter[str] = Counter()

    def __call__(self, state: S | None, event: Event) -> S:
        attempt = self._count(event.event_id)
        if attempt <= self.failures.get(event.event_id, 0):
            raise Transient(f"simulated outage {attempt} for {event.event_id}")
        return self.evolve(state, event)

    def _count(self, event_id: str) -> int:
        self.attempts[event_id] += 1
        if self.ledger is None or event_id not in self.failures:
            return self.attempts[event_id]
        path = self.ledger / event_id
        with path.open("ab") as tally:
            tally.write(b".")
        return path.stat().st_size
