"""Garbage-collector settings for the long-running, allocation-heavy processes: the worker and
the projection rebuild.

CPython's defaults, thresholds (700, 10, 10), run a young collection every 700 net allocations
of container objects. A batch of 10,000 events allocates millions, so a worker catching up on
100,000 events collected ~4,000 times, and every few seconds a full collection walked every live
object with the event loop stopped (~100 ms each): 3.1 s of collections, about a fifth of the
worker's CPU. With `THRESHOLDS` it was 0.6 s, and the worker's CPU per event fell from 135 to
108 µs (docs/performance.md, 2026-11-24). The young generation grows to at most `THRESHOLDS[0]`
objects before it is collected, so garbage in cycles lives a little longer; nothing else changes.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Freeze what exists now (modules, classes, settings: never garbage, so full collections
    need not walk it again) and raise the collection thresholds. Call once, early, in the
    process's entry point; not in a library function (it changes the whole interpreter)."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
