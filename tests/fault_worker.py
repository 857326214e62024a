"""`python -m tests.fault_worker FAILURES.json [LEDGER_DIR]`: a real worker whose loan fold
fails transiently for chosen events (`{"event_id": attempts_that_fail, …}`; with a ledger
directory the attempts are counted across restarts; see `tests.faults`).

Everything else — broker, PostgreSQL, Faust, tables, the retry timers — is the production
worker, configured by the same `LENDSTREAM_*` variables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from lendstream.domain.loans import evolve
from lendstream.settings import load_settings
from lendstream.worker import run_worker
from tests.faults import FlakyEvolve

if __name__ == "__main__":
    failures = orjson.loads(Path(sys.argv[1]).read_bytes())
    ledger = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    sys.exit(run_worker(load_settings(), FlakyEvolve(evolve, failures, ledger)))
