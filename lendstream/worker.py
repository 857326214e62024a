"""`lendstream worker`: one Faust worker process against the configured Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio

import faust

from lendstream.admin import ensure_topics
from lendstream.app import create_app
from lendstream.domain.loans import Loan, evolve
from lendstream.domain.sequencing import Evolve
from lendstream.gc_tuning import tune_gc
from lendstream.settings import Settings


def run_worker(settings: Settings, fold: Evolve[Loan] = evolve) -> int:
    """Create (or, with `LENDSTREAM_CREATE_TOPICS=false`, check) the topics, then run until
    SIGTERM/SIGINT (Faust stops cleanly). `TopologyError` when the topics do not fit."""
    tune_gc()
    asyncio.run(ensure_topics(settings))
    app, _runtime = create_app(settings, evolve=fold)
    worker = faust.Worker(app, loglevel="INFO", quiet=True)
    worker.execute_from_commandline()
    return 0
