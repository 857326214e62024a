"""Connecting to the read models from commands (`loan`, `dlq`, `lag`…)."""

from __future__ import annotations

from lendstream.settings import Settings


def resolve_dsn(settings: Settings) -> str:
    """`LENDSTREAM_PG_DSN`, or the embedded server in the data dir (started if needed).

    Raises `SettingsError` when neither exists.
    """
    if settings.pg_dsn:
        from lendstream.security import postgres_dsn

        return postgres_dsn(settings)
    from lendstream.embedded import start_postgres
    from lendstream.settings import SettingsError

    pg_dir = settings.data_dir.resolve() / "pg"
    if not (pg_dir / "PG_VERSION").exists():
        raise SettingsError(
            f"LENDSTREAM_PG_DSN is not set and there is no embedded PostgreSQL in {pg_dir}"
        )
    return start_postgres(pg_dir).dsn


async def drop_schema(dsn: str, schema: str) -> None:
    """Remove the read-model schema and everything in it (dev resets and test clean-up)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
