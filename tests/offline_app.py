"""A worker app built from settings without connecting to anything (for checks of its config)."""

from __future__ import annotations

from pathlib import Path

import faust
from prometheus_client import CollectorRegistry

from lendstream.app import create_app
from lendstream.metrics import Metrics
from lendstream.settings import Settings


def offline_app(data_dir: Path, **values: object) -> faust.App:
    """`create_app` with unreachable addresses and its own metrics registry."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        kafka="kafka://127.0.0.1:9",
        pg_dsn="postgresql://x@127.0.0.1:9/x",
        gateway_url="http://127.0.0.1:9",
        data_dir=data_dir,
        **values,  # type: ignore[arg-type]
    )
    app, _runtime = create_app(settings, Metrics(CollectorRegistry()))
    return app
