"""`python -m tests.bench`: the benchmark on a fresh embedded broker and PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from lendstream.embedded import embedded_stack
from tests.bench.measure import Options, Results, run_benchmark
from tests.bench.report import format_table


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.scale_workers < 2:
        parser.error(f"--scale-workers must be at least 2, got {args.scale_workers}")
    if args.scale_chaos and args.scale_workers < 3:
        parser.error("--scale-chaos needs --scale-workers 3 or more (it kills one, stops another)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("bench-results") / f"run-{stamp}.json"
    options = Options(
        events=args.events,
        dau=args.dau,
        seed=args.seed,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds,
        stages=args.stages,
        scale_workers=args.scale_workers,
        scale_chaos=args.scale_chaos,
        profile=out.with_name(f"{out.stem}-profile") if args.profile else None,
    )
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # stop the workers, broker and PostgreSQL
    with embedded_stack() as (broker, pg):
        root = broker.log_path.parent.parent
        services = {"broker": broker.proc.pid, "postgres": pg.pid}
        try:
            results = asyncio.run(
                run_benchmark(
                    options, broker.url, pg.dsn, root, _say, args.partitions, service_pids=services
                )
            )
        finally:
            _keep_worker_logs(root, out.with_name(f"{out.stem}-logs"))
    results.environment["load_average_at_end"] = os.getloadavg()
    _write(out, results)
    print(format_table(results))
    print(f"\nresults: {out}" + (f"\nprofile: {options.profile}.txt" if args.profile else ""))
    if results.rebuild and results.rebuild.profile:
        print(f"rebuild profile: {options.profile}-rebuild.txt")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    p.add_argument("--events", type=int, default=500_000, help="backlog size")
    p.add_argument("--dau", type=int, default=2_000, help="simulated daily active customers")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--latency-rate", type=float, default=2_000.0, help="events/s for (c)")
    p.add_argument("--latency-seconds", type=float, default=30.0)
    p.add_argument("--out", type=Path, help="JSON results (default bench-results/run-TIME.json)")
    p.add_argument(
        "--profile", action="store_true", help="py-spy the worker during (b), the rebuild in (e)"
    )
    p.add_argument("--scale-workers", type=int, default=2, help="workers of (g), at least 2")
    p.add_argument(
        "--scale-chaos",
        action="store_true",
        help="(g) through issue 8's failures: SIGKILL one worker at 15%%, SIGTERM another at "
        "30%%, restart both at 45%% (as tests/chaos/test_scale_out.py)",
    )
    p.add_argument(
        "--stages",
        default="abcdefgh",
        help="run only these, e.g. abc ((c), (d) and (e) need (b): (e) rebuilds its schema)",
    )
    return p


def _keep_worker_logs(root: Path, to: Path) -> None:
    """Copy the workers' logs out of the stack's directory, which is removed on exit (a
    fail-stop or a slow rebalance is read from them)."""
    logs = sorted(root.glob("*.log"))
    if logs:
        to.mkdir(parents=True, exist_ok=True)
        for log in logs:
            shutil.copy2(log, to / log.name)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _write(out: Path, results: Results) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results.as_json(), indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
