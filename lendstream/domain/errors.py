"""How applying an event can fail, as the sequencing logic understands it (one place for all
agents): an *invalid* message never gets this far (the codec turns it into `Invalid`); the
rest is one of the three exceptions below.
"""

from __future__ import annotations


class LifecycleViolation(Exception):
    """The event breaks the aggregate's lifecycle: it becomes a dead letter."""


class DependencyMissing(Exception):
    """The event came before what it depends on: parked until one of `needs` arrives, and dead
    after the park deadline."""

    def __init__(self, reason: str, needs: frozenset[str]) -> None:
        super().__init__(reason)
        self.needs = needs


class Transient(Exception):
    """Something outside the aggregate failed in a way that may pass (an external call, a
    timeout): retried after each backoff tier, dead once the tiers are used up."""
