"""Analyst access: the `lendstream_reader` role's login and the analysts' views (docs/analysts.md).

The role is created NOLOGIN by migration 0020, with SELECT on the schema's tables and views
(also future ones). A role is global to the PostgreSQL cluster, so one password serves every
schema; the worker that starts last with `LENDSTREAM_READER_PASSWORD` set decides it. Without
the setting the worker leaves the role as it is (a DBA may manage it instead).

The password is sent as a SCRAM-SHA-256 verifier computed here (as `psql`'s `\\password` does),
never in clear text, so it cannot show up in the server's statement log or `pg_stat_activity`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import unicodedata
from typing import TYPE_CHECKING

import asyncpg

from lendstream.projections.migrate import migration_files

if TYPE_CHECKING:
    import faust

    from lendstream.app import Runtime

log = logging.getLogger(__name__)

READER_ROLE = "lendstream_reader"
VIEWS_MIGRATION = "0021_analyst_views.sql"
SCRAM_ITERATIONS = 4096


def scram_verifier(
    password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802, RFC 7677).

    Clients normalise a password with SASLprep before hashing; for the passwords people type
    (ASCII, or Unicode in NFKC form) that is the NFKC normalisation done here.
    """
    salt = salt if salt is not None else os.urandom(16)
    normalised = unicodedata.normalize("NFKC", password).encode()
    salted = hashlib.pbkdf2_hmac("sha256", normalised, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def grant_login(conn: asyncpg.Connection, password: str) -> None:
    """Give `lendstream_reader` LOGIN with `password` (idempotent; needs CREATEROLE)."""
    verifier = scram_verifier(password)  # base64, digits, '$' and ':' only: a safe literal
    await conn.execute(f"ALTER ROLE {READER_ROLE} WITH LOGIN PASSWORD '{verifier}'")


async def recreate_views(conn: asyncpg.Connection, schema: str) -> None:
    """Re-create the analysts' views in `schema` (run it in the transaction that swaps in a
    rebuilt table: a view stays bound to the table it was created on)."""
    sql = next(text for _, name, text in migration_files() if name == VIEWS_MIGRATION)
    async with conn.transaction():
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        await conn.execute(sql)


def register(app: faust.App, runtime: Runtime) -> None:
    """With `LENDSTREAM_READER_PASSWORD` set, open the reader's login once PostgreSQL is ready.

    A failure (e.g. the worker's user lacks CREATEROLE) is logged as an error and does not stop
    the worker: analysts' access is not on the pipeline's critical path.
    """
    password = runtime.settings.reader_password
    if password is None:
        return

    @app.task
    async def open_reader_login() -> None:
        await runtime.ready.wait()
        assert runtime.pool is not None
        try:
            async with runtime.pool.acquire() as conn:
                await grant_login(conn, password)
            log.info("%s may log in (LENDSTREAM_READER_PASSWORD)", READER_ROLE)
        except (OSError, asyncpg.PostgresError) as exc:
            log.error("could not give %s LOGIN (LENDSTREAM_READER_PASSWORD): %s", READER_ROLE, exc)
