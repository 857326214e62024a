"""`python -m tests.bench.plan_cache`: the loan projection's release of parked dead letters
(`UPDATE dead_letters … WHERE event_id = ANY($1)`, one per batch) with the plan PostgreSQL
caches while the table is nearly empty, and planned for its ids each time (what
`projections.loans` does). Prints milliseconds per batch of 2,000 ids at 40,000 rows."""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from lendstream.embedded import start_postgres
from lendstream.projections.migrate import migrate

SCHEMA = "plan_cache"
ROWS = 40_000
IDS = 2_000
RELEASE = (
    f"UPDATE {SCHEMA}.dead_letters SET status = 'released', last_attempt_at = now() "
    "WHERE event_id = ANY($1::text[]) AND status = 'parked'"
)


async def measure(dsn: str, rounds: int = 10) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, SCHEMA)
        for _ in range(8):  # the statement is cached and goes generic while the table is empty
            await conn.execute(RELEASE, ["none"] * IDS)
        await conn.execute(
            f'INSERT INTO {SCHEMA}.dead_letters (id, topic, partition, "offset", key, event_id, '
            "error_class, error, status, first_seen_at, last_attempt_at) "
            "SELECT 'd' || g, 'payment-events', 0, g, 'L' || g, 'e' || g, 'Sequenced', 'x', "
            "CASE WHEN g % 2 = 0 THEN 'parked' ELSE 'released' END, now(), now() "
            "FROM generate_series(1, $1) AS g",
            ROWS,
        )
        results = {}
        for name, custom in (("cached plan", False), ("planned each time", True)):
            times = []
            for _ in range(rounds):
                ids = [f"e{random.randrange(3 * ROWS)}" for _ in range(IDS)]
                started = time.perf_counter()
                async with conn.transaction():
                    if custom:
                        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                    await conn.execute(RELEASE, ids)
                times.append((time.perf_counter() - started) * 1000)
            results[name] = statistics.median(times)
        return results
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await conn.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lendstream-plan-") as root:
        pg = start_postgres(Path(root) / "pg", remove_on_stop=True)
        try:
            results = asyncio.run(measure(pg.dsn))
        finally:
            pg.stop()
    print(f"| release of parked dead letters ({IDS:,} ids, {ROWS:,} rows) | ms per batch |")
    print("|---|---:|")
    for name, ms in results.items():
        print(f"| {name} | {ms:,.1f} |")


if __name__ == "__main__":
    main()
