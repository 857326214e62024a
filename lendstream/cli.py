"""The `lendstream` command. Each subcommand is a thin shell around a module that does the work.

Errors a user can cause (a bad setting, an unknown loan, a bad timestamp) print one line to
stderr and exit with status 2; they never print a stack trace.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime

from lendstream.settings import Settings, SettingsError, load_settings


class UserError(Exception):
    """Something the user can fix; printed as one line."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings()
        return int(args.handler(settings, args) or 0)
    except (SettingsError, UserError) as exc:
        print(f"lendstream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lendstream", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, handler: Callable[..., int | None], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
        p.set_defaults(handler=handler)
        return p

    dev = command("dev", _dev, "run broker, PostgreSQL and a worker on this machine")
    dev.add_argument("--simulate", action="store_true", help="feed generated traffic")
    dev.add_argument("--rate", type=float, default=200.0, help="simulated events per second")
    dev.add_argument("--seed", type=int, default=1)

    command("worker", _worker, "run a worker against the configured Kafka and PostgreSQL")

    loan = command("loan", _loan, "show a loan now, or as of a time")
    loan.add_argument("loan_id")
    loan.add_argument("--as-of", help="RFC 3339 timestamp, e.g. 2026-03-01T12:00:00Z")
    loan.add_argument("--json", action="store_true", help="print JSON")

    lag = command("lag", _lag, "consumer lag per group/topic/partition; needs no worker")
    lag.add_argument("--group", action="append", help="consumer group (repeatable; default: app)")
    lag.add_argument("--topic", action="append", default=[], help="show even if not committed")
    lag.add_argument("--json", action="store_true", help="print JSON (one object per refresh)")
    lag.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                     help="refresh every SECONDS (default 2) until Ctrl-C")  # fmt: skip
    return parser


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.devstack import run_dev

    return run_dev(settings, args.simulate, args.rate, args.seed)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.worker import run_worker

    settings.require("kafka", "pg_dsn")
    return run_worker(settings)


def _loan(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.queries import format_loan, loan_as_of

    as_of = parse_timestamp(args.as_of) if args.as_of else None
    row = asyncio.run(loan_as_of(settings, args.loan_id, as_of))
    if row is None:
        when = f" as of {args.as_of}" if as_of else ""
        raise UserError(f"loan {args.loan_id!r} not found{when}")
    print(format_loan(row, as_json=args.json))
    return 0


def _lag(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.app import APP_ID
    from lendstream.lag import LagUnavailable, run_command

    if args.watch is not None and args.watch <= 0:
        raise UserError(f"--watch needs a positive number of seconds, got {args.watch:g}")
    try:
        return run_command(settings, args.group or [APP_ID], args.topic, args.json, args.watch,
                           app_group=APP_ID)  # fmt: skip
    except LagUnavailable as exc:
        raise UserError(str(exc)) from None


def parse_timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UserError(f"not an RFC 3339 timestamp: {text!r}") from None
    if value.tzinfo is None:
        raise UserError(f"timestamp needs a UTC offset (e.g. Z): {text!r}")
    return value


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
