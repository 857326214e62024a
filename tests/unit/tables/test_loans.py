"""The `loans` table's value codec: every field of a key's state survives a round trip, and
values written before the failure-handling fields existed still decode."""

from __future__ import annotations

from datetime import timedelta

import orjson

from lendstream.domain.loans import evolve
from lendstream.domain.sequencing import Keyed, Policy, receive
from lendstream.tables.loans import decode, encode
from tests.faults import FlakyEvolve
from tests.unit.domain.factories import (
    NOW,
    Feed,
    applied,
    approved,
    at,
    feed,
    payout_requested,
    repayment,
)


def test_a_state_with_retrying_and_parked_items_round_trips() -> None:
    f = Feed()
    keyed, _ = feed(Keyed(), [f.message(applied(when=at(0))), f.message(approved(when=at(1)))])
    pr = payout_requested(when=at(2))
    flaky = FlakyEvolve(evolve, {pr.event_id: 5})
    policy = Policy(backoff=(1.0, 2.0, 3.0))
    keyed, _ = receive(keyed, f.message(pr), flaky, NOW, policy)
    keyed, _ = receive(
        keyed, f.message(repayment(when=at(3))), flaky, NOW + timedelta(seconds=1), policy
    )
    keyed = Keyed(keyed.state, keyed.applied, keyed.queue, seq=7)
    assert decode(encode(keyed)) == keyed
    assert keyed.queue[0].retry_at is not None and keyed.queue[0].retries == 1


def test_a_value_written_before_retries_existed_decodes_with_defaults() -> None:
    f = Feed()
    keyed, _ = feed(Keyed(), [f.message(repayment(when=at(3)))])
    old = orjson.loads(encode(keyed))
    for item in old["q"]:
        for name in ("attempts", "retries", "retry_at", "replayed", "parked_at"):
            item.pop(name)
    head = decode(orjson.dumps(old)).queue[0]
    assert (head.attempts, head.retries, head.retry_at, head.replayed, head.parked_at) == (
        1, 0, None, False, None,
    )  # fmt: skip
