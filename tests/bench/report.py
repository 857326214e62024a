"""The benchmark's results as a table (figures, ratio to the ceiling, the issue's targets)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tests.bench.measure import CatchUp, Results

MIB = 1024 * 1024


@dataclass(frozen=True)
class Row:
    figure: str
    value: float
    unit: str
    per_ceiling: float | None = None  # the figure divided by (a), for rates
    target: str = ""
    met: bool | None = None


def rows(results: Results) -> list[Row]:
    """Every figure of the run (only those of the stages that ran)."""
    ceiling = results.ceiling.get("rate", math.nan)
    out = [Row("(a) ceiling: aiokafka getmany, no processing", ceiling, "events/s", 1.0)]

    def rate(figure: str, value: float, target: float | None = None, unit: str = "events/s") -> Row:
        met = None if target is None else value >= target
        shown = f">= {target:,.0f}/s" if target is not None else ""
        return Row(figure, value, unit, value / ceiling, shown, met)

    if c := results.catch_up:
        out += [
            rate("(b) catch-up, 1 worker, after start-up", c.rate, 30_000),
            rate(f"    with start-up ({c.startup_seconds:.1f}s)", c.rate_with_startup),
            *[Row(f"    CPU per event: {who}", us, "us") for who, us in c.cpu_us_per_event.items()],
        ]
    if lat := results.latency:
        label = f"at {lat.rate_reached:,.0f} events/s"
        out += [
            Row(f"(c) end-to-end p50 {label} (histogram)", lat.histogram_p50 * 1000, "ms"),
            Row(
                f"    end-to-end p99 {label} (histogram)",
                lat.histogram_p99 * 1000,
                "ms",
                None,
                "<= 500 ms",
                lat.histogram_p99 <= 0.5,
            ),
            Row(
                "    p50 append -> visible in PostgreSQL (polled)",
                lat.visible_p50 * 1000,
                "ms",
            ),
            Row(
                "    p99 append -> visible in PostgreSQL (polled)",
                lat.visible_p99 * 1000,
                "ms",
            ),
            Row("    p50 append -> event_log.recorded_at", lat.event_log_p50 * 1000, "ms"),
            Row("    p99 append -> event_log.recorded_at", lat.event_log_p99 * 1000, "ms"),
            Row(f"    projection transactions ({lat.batches:,}), events each", lat.batch_mean, ""),
            Row("    transaction time, mean", lat.commit_mean * 1000, "ms"),
            Row("    transaction time, p99 (histogram)", lat.commit_p99 * 1000, "ms"),
            *[
                Row(f"    CPU per event: {who}", us, "us")
                for who, us in lat.cpu_us_per_event.items()
            ],
        ]
    if r := results.restore:
        out.append(
            rate(f"(d) changelog restore ({r.records:,} records)", r.rate, 50_000, "records/s")
        )
    if b := results.rebuild:
        out += [
            rate(f"(e) projection rebuild: fold, {b.events:,} events", b.rate, 100_000),
            rate(f"    with the swap ({b.swap_seconds:.2f}s)", b.rate_with_swap, 100_000),
            rate(f"    with process start-up ({b.total_seconds:.1f}s in all)", b.rate_with_startup),
            *[Row(f"    CPU per event: {who}", us, "us") for who, us in b.cpu_us_per_event.items()],
            Row("    peak RSS of the rebuild (with its fold processes)", b.peak_rss_mb, "MiB"),
        ]
    if results.peak_rss_mb:
        out += [
            Row(
                f"(f) peak RSS of the worker ({results.loans:,} loans)", results.peak_rss_mb, "MiB"
            ),
            Row(
                "    extrapolated to 100,000 loans",
                rss_for(results, 100_000),
                "MiB",
                None,
                "<= 500 MB",
                rss_for(results, 100_000) * MIB <= 500e6,
            ),
        ]
    if (s := results.scale_out) and (one := results.catch_up):
        n = s.workers
        through = ", SIGKILL + SIGTERM + restarts" if s.disruptions else ""
        ratio, whole = s.rate / one.rate, s.rate_with_startup / one.rate_with_startup
        out += [
            rate(f"(g) scale-out: {n} workers{through}, after start-up", s.rate),
            Row(f"    {n} workers / 1 worker", ratio, "x", None, "> 1", ratio > 1),
            rate(
                f"    with start-up ({s.events:,} events in {s.total_seconds:.0f}s)",
                s.rate_with_startup,
            ),
            Row(f"    with start-up, {n} workers / 1 worker", whole, "x", None, "> 1", whole > 1),
        ]
    if results.floor:
        out.append(rate("(h) Faust floor: take_events agent doing nothing", results.floor["rate"]))
    if results.floor_batched:
        out.append(
            rate("    same consumer, fetched batches taken whole", results.floor_batched["rate"])
        )
    return out


def rss_for(results: Results, loans: int) -> float:
    """Peak RSS extrapolated to `loans`: the RSS at start-up plus the growth per loan seen."""
    per_loan = (results.peak_rss_mb - results.startup_rss_mb) / max(results.loans, 1)
    return results.startup_rss_mb + per_loan * loans


def format_table(results: Results) -> str:
    header = f"{'figure':<58} {'value':>12} {'unit':<10} {'/ (a)':>7}  target"
    lines = [header, "-" * len(header)]
    for row in rows(results):
        ratio = (
            ""
            if row.per_ceiling is None or math.isnan(row.per_ceiling)
            else f"{row.per_ceiling:.3f}"
        )
        verdict = {True: " (met)", False: " (not met)", None: ""}[row.met] if row.target else ""
        lines.append(
            f"{row.figure:<58} {_number(row.value):>12} {row.unit:<10} {ratio:>7}  "
            f"{row.target}{verdict}"
        )
    lat, one = results.latency, results.catch_up
    if lat and one and lat.rate_reached > 0.9 * one.rate:
        lines.append(
            f"note: (c) ran at {lat.rate_reached:,.0f}/s, at or above what one worker sustains "
            f"({one.rate:,.0f}/s in (b)): its latency is mostly queueing; rerun with a lower "
            "--latency-rate for the latency of an unsaturated worker"
        )
    if (b := results.rebuild) and not b.swap_observed:
        lines.append(
            "note: no poll saw (e)'s swap (shorter than a poll): the fold's end is the last poll "
            "that saw it folding, so the fold rate is an upper bound (by about a poll)"
        )
    return "\n".join(lines)


def _number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def describe(catch_up: CatchUp) -> str:
    rss = ", ".join(f"{mb:.0f}" for mb in catch_up.peak_rss_mb)
    return (
        f"{catch_up.events:,} events in {catch_up.total_seconds:.1f}s "
        f"({catch_up.startup_seconds:.1f}s start-up), peak RSS {rss} MiB"
    )
