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
from typing import Any

from lendstream.settings import Settings, SettingsError, load_settings
from lendstream.topology import TopologyError


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
    except (SettingsError, UserError, TopologyError) as exc:
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
    dev.add_argument("--gateway-transient-rate", type=float, default=0.05, metavar="P",
                     help="gateway simulator: share of requests failing transiently")  # fmt: skip
    dev.add_argument("--gateway-permanent-rate", type=float, default=0.01, metavar="P",
                     help="gateway simulator: share of requests rejected for good")  # fmt: skip

    command("worker", _worker, "run a worker against the configured Kafka and PostgreSQL")

    gateway = command("gateway-sim", _gateway_sim, "run the payout gateway simulator")
    gateway.add_argument("--host", default="0.0.0.0", help="interface (default: all)")
    gateway.add_argument("--port", type=int, default=8080)
    gateway.add_argument("--transient-rate", type=float, default=0.0, help="0..1 per request")
    gateway.add_argument("--permanent-rate", type=float, default=0.0, help="0..1 per request")
    gateway.add_argument("--seed", type=int, default=1)
    gateway.add_argument("--hang-seconds", type=float, default=30.0, help="a timeout's hang")

    _dlq_commands(sub)
    topics = command("topics", _topics, "show (plan) or create (apply) lendstream's Kafka topics")
    topics.add_argument("action", choices=["plan", "apply"])
    sim = command("simulate", _simulate, "produce traffic from a simulated customer population")
    sim.add_argument("--dau", type=int, required=True, help="daily active customers")
    sim.add_argument("--duration", type=float, help="seconds to produce for (paced mode)")
    sim.add_argument("--rate", type=float, default=1000.0, help="events per second (paced)")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--backlog", type=int, metavar="COUNT",
                     help="produce COUNT events as fast as possible, then exit")  # fmt: skip

    loan = command("loan", _loan, "show a loan now, or as of a time")
    loan.add_argument("loan_id")
    loan.add_argument("--as-of", help="RFC 3339 timestamp, e.g. 2026-03-01T12:00:00Z")
    loan.add_argument("--json", action="store_true", help="print JSON")

    schema = command("schema", _schema, "event schemas as artefacts (JSON Schema, AsyncAPI)")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True)
    export = schema_sub.add_parser("export", help="write a JSON Schema per event type and "
                                   "version, and an AsyncAPI 3.0 document of all topics")  # fmt: skip
    export.add_argument("--out", default="docs/schemas", help="folder (default docs/schemas)")

    projections = command("projections", _projections, "read-model maintenance")
    projections_sub = projections.add_subparsers(dest="projections_command", required=True)
    rebuild = projections_sub.add_parser(
        "rebuild", help="rebuild a projection's tables from the retained topics, then swap "
        "them in atomically (the live tables stay readable)")  # fmt: skip
    rebuild.add_argument("name", nargs="?", help="loans (default) or one of its tables")
    rebuild.add_argument("--from-retained", action="store_true",
                         help="rebuild even if topic retention deleted the start of an input "
                         "topic (the tables then reflect only the retained messages)")  # fmt: skip

    lag = command("lag", _lag, "consumer lag per group/topic/partition; needs no worker")
    lag.add_argument("--group", action="append",
                     help="consumer group (repeatable; default LENDSTREAM_APP_ID)")  # fmt: skip
    lag.add_argument("--topic", action="append", default=[], help="show even if not committed")
    lag.add_argument("--json", action="store_true", help="print JSON (one object per refresh)")
    lag.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                     help="refresh every SECONDS (default 2) until Ctrl-C")  # fmt: skip
    return parser


def _dlq_commands(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="dead letters: list, show, replay, discard")
    actions = dlq.add_subparsers(dest="action", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help, description=help)
        p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
        p.set_defaults(handler=_dlq)
        return p

    listing = action("list", "dead letters, newest first")
    listing.add_argument(
        "--status", choices=("parked", "released", "dead", "replayed", "discarded")
    )
    listing.add_argument("--topic")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = action("show", "one dead letter, with value, headers, error and attempts")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print JSON")
    replay = action("replay", "re-drive dead letters in their loan's order")
    replay.add_argument("ids", nargs="*", metavar="ID")
    replay.add_argument("--all", action="store_true", help="every dead letter with status dead")
    replay.add_argument("--topic", help="with --all: only this topic")
    replay.add_argument("--value-file", help="a corrected event (JSON) to apply instead")
    replay.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the result")
    discard = action("discard", "close dead letters without applying them")
    discard.add_argument("ids", nargs="+", metavar="ID")
    discard.add_argument("--reason", required=True)
    discard.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the result")


def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.dlq import DlqError
    from lendstream.dlq_cli import run

    try:
        print(asyncio.run(run(settings, args)))
    except DlqError as exc:
        raise UserError(str(exc)) from None
    return 0


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.devstack import run_dev
    from lendstream.gateway_sim import SimulatorConfig

    gateway = SimulatorConfig(args.gateway_transient_rate, args.gateway_permanent_rate, args.seed)
    try:
        gateway.validate()
    except ValueError as exc:
        message = str(exc).replace("transient_rate", "--gateway-transient-rate")
        raise UserError(message.replace("permanent_rate", "--gateway-permanent-rate")) from None
    return run_dev(settings, args.simulate, args.rate, args.seed, gateway)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.worker import run_worker

    settings.require("kafka", "pg_dsn")
    return run_worker(settings)


def _gateway_sim(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.gateway_sim import SimulatorConfig, run

    config = SimulatorConfig(
        args.transient_rate, args.permanent_rate, args.seed, hang_seconds=args.hang_seconds
    )
    try:
        config.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    run(args.host, args.port, config)
    return 0


def _topics(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.admin import apply_topics, plan_topics
    from lendstream.topology import errors, format_plan

    settings.require("kafka")
    if args.action == "apply":
        print(format_plan(asyncio.run(apply_topics(settings)), applied=True))
        return 0
    changes = asyncio.run(plan_topics(settings))
    print(format_plan(changes))
    return 1 if errors(changes) else 0


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.simulate import NoBroker, run_simulate

    if args.dau < 1:
        raise UserError(f"--dau must be at least 1, got {args.dau}")
    if args.backlog is None and (args.duration is None or args.duration <= 0):
        raise UserError("--duration SECONDS (> 0) is needed unless --backlog COUNT is given")
    if args.backlog is not None and args.backlog < 1:
        raise UserError(f"--backlog must be at least 1, got {args.backlog}")
    if args.rate <= 0:
        raise UserError(f"--rate must be positive, got {args.rate}")
    try:
        run_simulate(settings, args.dau, args.duration or 0.0, args.rate, args.seed,
                     args.backlog, say=_say_simulate)  # fmt: skip
    except NoBroker as exc:
        raise UserError(str(exc)) from None
    return 0


def _say_simulate(text: str) -> None:
    print(f"[simulate {datetime.now().strftime('%H:%M:%S')}] {text}", flush=True)


def _loan(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.queries import format_loan, loan_as_of

    as_of = parse_timestamp(args.as_of) if args.as_of else None
    row = asyncio.run(loan_as_of(settings, args.loan_id, as_of))
    if row is None:
        when = f" as of {args.as_of}" if as_of else ""
        raise UserError(f"loan {args.loan_id!r} not found{when}")
    print(format_loan(row, as_json=args.json))
    return 0


def _schema(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from lendstream.schemas import export

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out!r} is a file, not a folder")
    try:
        written = export(out)
    except OSError as exc:
        raise UserError(f"cannot write to {args.out!r}: {exc.strerror or exc}") from None
    print(f"wrote {len(written)} files to {out}")
    return 0


def _projections(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.gc_tuning import tune_gc
    from lendstream.kafka import with_broker
    from lendstream.pg import resolve_dsn
    from lendstream.projections.rebuild import RebuildStalled, TruncatedInput, run_rebuild
    from lendstream.projections.replay import UnknownProjection, projection_named
    from lendstream.security import kafka_client_options

    try:
        projection_named(args.name)
    except UnknownProjection as exc:
        raise UserError(str(exc)) from None
    import asyncpg

    settings = with_broker(settings)
    tune_gc()
    try:
        report = run_rebuild(settings, resolve_dsn(settings), settings.bootstrap_servers,
                             kafka_client_options(settings), say=_say_progress,
                             from_retained=args.from_retained)  # fmt: skip
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError) as exc:  # no read models
        raise UserError(f"{exc} (LENDSTREAM_PG_SCHEMA={settings.pg_schema!r})") from None
    except (TruncatedInput, RebuildStalled) as exc:  # the live tables are as they were
        raise UserError(f"rebuild failed, the live tables are unchanged: {exc}") from None
    print(f"rebuilt {', '.join(report.tables)} in {settings.pg_schema}: {report.events:,} "
          f"events in {report.seconds:.1f} s ({report.rate:,.0f} events/s)")  # fmt: skip
    return 0


def _say_progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _lag(settings: Settings, args: argparse.Namespace) -> int:
    from lendstream.lag import LagUnavailable, run_command

    if args.watch is not None and args.watch <= 0:
        raise UserError(f"--watch needs a positive number of seconds, got {args.watch:g}")
    groups = args.group or [settings.app_id]  # the workers' consumer group
    try:
        return run_command(settings, groups, args.topic, args.json, args.watch,
                           app_group=settings.app_id)  # fmt: skip
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
