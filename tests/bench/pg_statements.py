"""`python -m tests.bench.pg_statements [--events N]`: catch-up (b) on a fresh embedded stack
whose PostgreSQL loads `pg_stat_statements`, then where PostgreSQL's time went: each
statement's server time per event, the rows written per table (and how many updates were HOT),
the WAL, and the dead letters the catch-up parked and released, by reason."""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import Any

import asyncpg

from lendstream.embedded import Postgres, embedded_stack
from tests.bench.measure import Options, run_benchmark

SCHEMA = "bench"
PRELOAD = "\nshared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = 'all'\n"


def load_pg_stat_statements(pg: Postgres) -> None:
    """Restart `pg` with `pg_stat_statements` preloaded (its data kept)."""
    pg.pause()
    conf = pg.data_dir / "postgresql.conf"
    conf.write_text(conf.read_text() + PRELOAD)
    pg.resume()


async def report(dsn: str, events: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        statements = await conn.fetch(
            "SELECT calls, total_exec_time AS ms, wal_bytes, query FROM pg_stat_statements "
            "WHERE query NOT ILIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 12"
        )
        total = await conn.fetchval(
            "SELECT sum(total_exec_time) FROM pg_stat_statements "
            "WHERE query NOT ILIKE '%pg_stat_statements%'"
        )
        tables = await conn.fetch(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE schemaname = $1 AND n_tup_ins + n_tup_upd > 0 ORDER BY n_tup_ins DESC",
            SCHEMA,
        )
        wal = await conn.fetchval("SELECT wal_bytes FROM pg_stat_wal")
        parked = await conn.fetch(
            f"SELECT topic, error_class, error, status FROM {SCHEMA}.dead_letters"
        )
    finally:
        await conn.close()
    print("\n| statement (server time) | calls | µs per event | WAL MB |\n|---|---:|---:|---:|")
    for s in statements:
        query = re.sub(r"\s+", " ", s["query"])[:70].replace("|", "/")
        print(f"| `{query}` | {s['calls']:,} | {s['ms'] * 1000 / events:.1f} | "
              f"{int(s['wal_bytes']) / 1e6:.0f} |")  # fmt: skip
    print(f"| **all statements** | | **{float(total) * 1000 / events:.1f}** | "
          f"{int(wal) / 1e6:.0f} (all WAL) |")  # fmt: skip
    print("\n| table | inserts | updates | of which HOT |\n|---|---:|---:|---:|")
    for t in tables:
        print(f"| {t['relname']} | {t['n_tup_ins']:,} | {t['n_tup_upd']:,} | "
              f"{t['n_tup_hot_upd']:,} |")  # fmt: skip
    print(f"\n| dead letters by reason ({len(parked):,} rows) | status | rows |\n|---|---|---:|")
    for (topic, error_class, reason, status), n in _reasons(parked)[:8]:
        print(f"| {topic}: {error_class}: {reason} | {status} | {n:,} |")


def _reasons(rows: list[Any]) -> list[tuple[tuple[str, str, str, str], int]]:
    counts: dict[tuple[str, str, str, str], int] = {}
    for r in rows:
        reason = re.sub(r"\S+:\d+:\d+", "<position>", r["error"])  # "waiting behind t:p:o"
        key = (r["topic"], r["error_class"], reason[:70], r["status"])
        counts[key] = counts.get(key, 0) + 1
    return sorted(counts.items(), key=lambda item: -item[1])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.pg_statements")
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    options = Options(events=args.events, stages="b")
    with embedded_stack() as (broker, pg):
        load_pg_stat_statements(pg)

        async def run() -> None:
            conn = await asyncpg.connect(pg.dsn)
            await conn.execute("CREATE EXTENSION pg_stat_statements")
            await conn.close()
            root = broker.log_path.parent.parent
            pids = {"broker": broker.proc.pid, "postgres": pg.pid}
            results = await run_benchmark(
                options, broker.url, pg.dsn, root, print, schema=SCHEMA, service_pids=pids
            )
            if results.catch_up is not None:
                cpu = results.catch_up.cpu_us_per_event
                print(f"catch-up {results.catch_up.rate:,.0f} events/s; CPU µs per event: {cpu}")
            await report(pg.dsn, args.events)

        asyncio.run(run())


if __name__ == "__main__":
    main()
