"""Traffic for integration tests: lifecycles, duplicates and invalid messages, deterministic."""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

from lendstream.simulation import Produced, interleave, population

Raw = tuple[str, bytes | None, bytes | None]


def invalid_messages(count: int, seed: int) -> list[Raw]:
    """`count` invalid messages, each on a key of its own (so they block nothing else)."""
    rng = random.Random(seed)
    good = {
        "event_id": "x", "type": "LoanApplied", "occurred_at": "2026-01-01T00:00:00Z",
        "loan_id": "K", "data": {"customer_id": "c", "partner_id": "p", "amount_cents": 100,
                                 "currency": "EUR", "term_months": 12},
    }  # fmt: skip

    def variant(n: int, key: str) -> bytes:
        v = orjson.loads(orjson.dumps(good))
        v["event_id"], v["loan_id"] = f"bad-{seed}-{n}", key
        kind = n % 8
        if kind == 0:
            return b"\xff\xfe not json"
        if kind == 1:
            return b"[1, 2, 3]"
        if kind == 2:
            v["data"]["amount_cents"] = -5
        elif kind == 3:
            v["data"]["currency"] = "XYZ"
        elif kind == 4:
            v["type"] = "LoanExploded"
        elif kind == 5:
            v["surprise"] = True
        elif kind == 6:
            del v["occurred_at"]
        else:
            v["loan_id"] = key + "-other"  # key mismatch
        return orjson.dumps(v)

    out = []
    for n in range(count):
        key = f"bad-{seed}-{n}"
        topic = rng.choice(("loan-events", "payment-events"))
        out.append((topic, key.encode(), variant(n, key)))
    return out


@dataclass
class Traffic:
    lifecycles: list[list[Produced]]
    stream: list[Produced | Raw]
    duplicates: int
    invalid: list[Raw]


def build(seed: int, loans: int, min_events: int, duplicate_rate: float = 0.02, invalid: int = 40,
          max_repayments: int = 36) -> Traffic:  # fmt: skip
    """Lifecycles for `loans` loans (more if needed to reach `min_events`), interleaved, with
    re-sent duplicates (always after their original) and invalid messages mixed in."""
    lifecycles = population(seed, loans, max_repayments=max_repayments)
    extra = 0
    while sum(map(len, lifecycles)) < min_events:
        extra += 1
        lifecycles += population(seed * 1000 + extra, loans // 4, max_repayments=max_repayments)
    rng = random.Random(seed)
    stream: list[Produced | Raw] = list(interleave(seed, lifecycles))
    originals = len(stream)
    dupes = int(originals * duplicate_rate)
    for _ in range(dupes):
        i = rng.randrange(originals)
        stream.insert(rng.randrange(i + 1, len(stream) + 1), stream[i])
    bad = invalid_messages(invalid, seed)
    for raw in bad:
        stream.insert(rng.randrange(len(stream) + 1), raw)
    return Traffic(lifecycles, stream, dupes, bad)
