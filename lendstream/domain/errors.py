"""How applying an event can fail, as the sequencing logic understands it."""

from __future__ import annotations


class LifecycleViolation(Exception):
    """The event breaks the aggregate's lifecycle: it becomes a dead letter."""


class DependencyMissing(Exception):
    """The event came before what it depends on: parked until one of `needs` arrives."""

    def __init__(self, reason: str, needs: frozenset[str]) -> None:
        super().__init__(reason)
        self.needs = needs
