"""The benchmark's stages, each a measurement on the embedded stack (real broker, PostgreSQL,
worker processes), all in one run over one backlog:

(a) ceiling: raw aiokafka `getmany` of the backlog, no processing;
(b) catch-up of one worker on the backlog (start until the PostgreSQL positions reach the
    produced end offsets; with and without start-up);
(c) end-to-end latency at a fixed rate (the worker's `lendstream_end_to_end_seconds` histogram,
    and exactly from `event_log.recorded_at` minus the Kafka record timestamp);
(d) changelog restore after the worker's local state is wiped (from Faust's recovery log);
(e) projection rebuild: `lendstream projections rebuild` (a child process with the workers'
    `LENDSTREAM_*` settings) on the schema that (b) and (c) filled, the worker stopped; events
    folded per second (the fold alone, with the swap, with the process start-up), and CPU per
    event of the rebuild, the broker and PostgreSQL. Needs (b), as (c) and (d) do;
(f) peak RSS of the workers (`VmHWM`);
(g) scale-out: `scale_workers` workers (2 unless asked) sharing the partitions, catch-up
    compared with one; with `scale_chaos`, through issue 8's failures (`KillPattern`);
(h) the Faust floor: a worker whose `take_events` agent does nothing (`floor.py`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg
import psutil
from aiokafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from lendstream.devstack import worker_env
from lendstream.embedded import free_port, stop_process
from lendstream.kafka import group_less_consumer, high_watermarks
from lendstream.projections.writer import stored_positions
from lendstream.settings import Settings
from lendstream.simulate import produce_backlog, produce_paced
from lendstream.simulation import Simulation
from lendstream.tables.loans import NAME as LOANS_TABLE
from tests.bench.profile import Profiler, Rules
from tests.harness import Pipeline, WorkerProcess

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
WATCH_SECONDS = 0.02
RESTORE_STARTED = "Restoring state from changelog topics"
RESTORE_DONE = "Done reading from changelog topics"
REPO = Path(__file__).resolve().parents[2]
_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
Ends = dict[tuple[str, int], int]
REBUILD = ("-m", "lendstream", "projections", "rebuild")
#: The rebuild's PostgreSQL `application_name`, by which (e) finds its connection.
REBUILD_APP = "bench-rebuild"
#: Statements that only the rebuild's swap transaction runs (see `projections/rebuild.py`).
SWAP_MARKERS = ("LOCK TABLE", "view_table_usage", "aclexplode", "pg_indexes", " RENAME TO ",
                "SET SCHEMA", "__replaced", "search_path", "quote_ident")  # fmt: skip
_REBUILT = re.compile(r"^rebuilt .*: ([\d,]+) events in ([\d.]+) s \(([\d,]+) events/s\)$", re.M)
#: What a rebuild sample was doing, by the first rule whose any substring is in its stack.
REBUILD_ACTIVITIES: Rules = (
    ("decode: Kafka record -> Message (codec, validation)", ("to_message (",)),
    ("merge by timestamp (replay.Merge)", ("Merge.",)),
    ("rows: history, summaries, exposures (ShadowRows)", ("ShadowRows.",)),
    ("fold: sequencing.handle + evolve + new_version", ("Fold.apply (",)),
    ("PostgreSQL writes, client side (ShadowWriter, asyncpg)", ("ShadowWriter.",)),
    ("aiokafka: fetch and record parsing", ("getmany", "Fetcher", "AIOKafkaConnection")),
    ("asyncpg: other (connection, protocol)", ("asyncpg",)),
    ("event loop scheduling (select, run_once)", ("EpollSelector.select", "_run_once")),
)  # fmt: skip


@dataclass
class Options:
    events: int = 500_000
    dau: int = 2_000
    seed: int = 1
    latency_rate: float = 2_000.0
    latency_seconds: float = 30.0
    stage_timeout: float = 3_600.0
    stages: str = "abcdefgh"  # which of the stages to run ((c), (d), (e) need (b))
    scale_workers: int = 2  # workers of (g)
    scale_chaos: bool = False  # (g) through issue 8's SIGKILL and SIGTERM (`KillPattern`)
    profile: Path | None = None  # py-spy the catch-up worker, writing here (text summary)


@dataclass
class CatchUp:
    """One catch-up: `workers` processes from start until every position reached its end."""

    workers: int
    events: int
    total_seconds: float
    startup_seconds: float  # until the first batch was committed
    rate: float  # events/s after start-up
    rate_with_startup: float
    peak_rss_mb: list[float] = field(default_factory=list)
    startup_rss_mb: list[float] = field(default_factory=list)
    fail_stops: int = 0
    #: CPU seconds used after start-up, per event (µs): "workers" (together), and the broker
    #: and PostgreSQL when their pids are known. Less sensitive to a shared machine's load than
    #: the rates.
    cpu_us_per_event: dict[str, float] = field(default_factory=dict)
    #: what `KillPattern` did, in order: "<share processed> <seconds since start> <action>"
    disruptions: list[str] = field(default_factory=list)


@dataclass
class KillPattern:
    """The failures of issue 8's scale test (`tests/chaos/test_scale_out.py`), applied to a
    benchmark run so that its wall time can be compared with one worker's: once `kill_at` of
    the events are stored, SIGKILL the second worker; at `stop_at`, SIGTERM the third (it must
    exit by itself, 0); at `restart_at`, start both again on their own data dirs."""

    names: list[str]
    kill_at: float = 0.15
    stop_at: float = 0.30
    restart_at: float = 0.45
    done: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.names) < 3:
            raise ValueError(f"the kill pattern needs 3 workers or more, got {len(self.names)}")

    async def step(self, pipe: Pipeline, share: float, elapsed: float) -> None:
        """Apply whatever is due at `share` (each action once, in order)."""
        workers = {w.name: w for w in pipe.workers}
        victim, stopped = self.names[1], self.names[2]
        if share >= self.kill_at and not self.done:
            workers[victim].kill()
            self._did(share, elapsed, f"SIGKILL {victim}")
        elif share >= self.stop_at and len(self.done) == 1:
            worker = workers[stopped]
            await asyncio.to_thread(worker.stop)
            if worker.proc.returncode != 0:
                raise RuntimeError(f"{stopped} did not stop cleanly:\n{worker.log_tail()}")
            self._did(share, elapsed, f"SIGTERM {stopped}")
        elif share >= self.restart_at and len(self.done) == 2:
            for name in (victim, stopped):
                pipe.start_worker(name, web_port=free_port())
            self._did(share, elapsed, f"restart {victim} {stopped}")

    def _did(self, share: float, elapsed: float, action: str) -> None:
        self.done.append(f"{share:.2f} {elapsed:.1f}s {action}")


@dataclass
class Latency:
    rate_asked: float
    rate_reached: float
    events: int
    histogram_p50: float  # the worker's histogram, Kafka append -> commit (bucketed)
    histogram_p99: float
    visible_p50: float  # per record: Kafka timestamp -> position visible in PostgreSQL
    visible_p99: float  # (an upper bound: polled every WATCH_SECONDS)
    event_log_p50: float  # per record: Kafka timestamp -> event_log.recorded_at
    event_log_p99: float  # (a lower bound: taken before the transaction's statements)
    batches: int = 0  # projection transactions during (c), from the worker's histograms
    batch_mean: float = math.nan  # events per transaction
    commit_mean: float = math.nan  # seconds per transaction
    commit_p99: float = math.nan  # (bucketed)
    cpu_us_per_event: dict[str, float] = field(default_factory=dict)  # workers, services


@dataclass
class Restore:
    records: int
    seconds: float
    rate: float
    startup_seconds: float  # worker start until the restore began


@dataclass
class RebuildRun:
    """One `lendstream projections rebuild` run. The fold runs from the rebuild's PostgreSQL
    connection (its shadow tables created) to the start of its swap transaction, both from
    `pg_stat_activity`; `seconds` is the command's own figure (fold + swap + dropping the
    shadow schema)."""

    events: int  # folded, as the command reports them
    fold_seconds: float
    seconds: float
    total_seconds: float  # process start to exit (interpreter start-up, imports, Kafka client)
    rate: float  # events / fold_seconds
    rate_with_swap: float  # events / seconds
    rate_with_startup: float  # events / total_seconds
    swap_seconds: float  # seconds - fold_seconds (plus the connection set-up, a few ms)
    swap_observed: bool  # False: no poll saw the swap; the fold's end is the last poll (a bound)
    peak_rss_mb: float
    #: CPU seconds per event (µs) from the rebuild's PostgreSQL connection to its exit:
    #: "rebuild" (the process), "broker", "postgres" (backends that exited included)
    cpu_us_per_event: dict[str, float] = field(default_factory=dict)
    startup_cpu_seconds: float = 0.0  # the rebuild's CPU before its connection (imports...)
    profile: dict[str, Any] | None = None


@dataclass
class Results:
    options: dict[str, Any]
    environment: dict[str, Any]
    backlog: dict[str, Any]
    ceiling: dict[str, Any] = field(default_factory=dict)
    catch_up: CatchUp | None = None
    latency: Latency | None = None
    restore: Restore | None = None
    rebuild: RebuildRun | None = None
    peak_rss_mb: float = 0.0
    startup_rss_mb: float = 0.0  # the worker's RSS when its first batch was committed
    loans: int = 0
    scale_out: CatchUp | None = None
    floor: dict[str, Any] = field(default_factory=dict)
    floor_batched: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Bench:
    """One benchmark run on a pipeline whose broker and PostgreSQL are already running."""

    def __init__(
        self,
        pipeline: Pipeline,
        options: Options,
        say: Callable[[str], None],
        service_pids: dict[str, int] | None = None,
    ) -> None:
        self.service_pids = service_pids or {}
        self.pipe = pipeline
        self.options = options
        self.say = say
        self.sim = Simulation(seed=options.seed, dau=options.dau)
        self.profile_summary: dict[str, Any] | None = None

    @property
    def bootstrap(self) -> list[str]:
        return self.pipe.settings.bootstrap_servers

    async def run(self, environment: dict[str, Any]) -> Results:
        o = self.options
        await self.pipe.create_topics()
        self.say(f"producing a backlog of {o.events:,} events (dau {o.dau:,}, seed {o.seed})")
        produced = await produce_backlog(self.bootstrap, self.sim, o.events)
        self.pipe.ends = dict(produced.ends)
        results = Results(asdict(o), environment, self._backlog_facts(produced.rate))
        stages = o.stages
        if "a" in stages:
            self.say("(a) ceiling: raw aiokafka consumption")
            results.ceiling = await ceiling(self.bootstrap, self.pipe.ends)
            self.say(f"    {results.ceiling['rate']:,.0f} events/s")
        if "b" in stages:
            await self.one_worker(results, latency="c" in stages)
        if "b" in stages and "d" in stages:
            self.say("(d) changelog restore with the local state wiped")
            results.restore = await self.restore("w1")
            self.say(f"    {results.restore.records:,} records at {results.restore.rate:,.0f}/s")
        if "e" in stages and "b" in stages:
            self.say("(e) projection rebuild: `lendstream projections rebuild` on (b)'s schema")
            results.rebuild = r = await self.rebuild()
            self.say(f"    {r.events:,} events: fold {r.rate:,.0f}/s, "
                     f"with the swap {r.rate_with_swap:,.0f}/s")  # fmt: skip
        elif "e" in stages:
            self.say("(e) skipped: it rebuilds the schema that (b) fills (add b to --stages)")
        if "g" in stages:
            names = [f"s{n}" for n in range(1, o.scale_workers + 1)]
            chaos = KillPattern(names) if o.scale_chaos else None
            self.say(
                f"(g) scale-out: {len(names)} workers" + (", SIGKILL/SIGTERM" if chaos else "")
            )
            results.scale_out, _ = await self.catch_up(
                self.fresh_pipeline("scale"), names, chaos=chaos
            )
            self.say(f"    {results.scale_out.rate:,.0f} events/s")
            for line in results.scale_out.disruptions:
                self.say(f"    {line}")
        if "h" in stages:
            self.say("(h) Faust floor: a take_events agent that does nothing")
            results.floor = await self.floor("floor")
            self.say(f"    {results.floor['rate']:,.0f} events/s")
            self.say("    the same Faust consumer, batches taken whole (no per-message delivery)")
            results.floor_batched = await self.floor("floor-batched", "--batched-drain")
            self.say(f"    {results.floor_batched['rate']:,.0f} events/s")
        return results

    async def one_worker(self, results: Results, latency: bool) -> None:
        """(b) catch-up, then (c) latency on the same worker, and (f) its peak RSS."""
        o = self.options
        self.say("(b) catch-up: one worker")
        catch_up, worker = await self.catch_up(self.pipe, ["w1"], keep_running=True, profile=True)
        results.catch_up = catch_up
        self.say(
            f"    {catch_up.rate:,.0f} events/s after {catch_up.startup_seconds:.1f}s start-up"
        )
        assert worker is not None
        try:
            if latency:
                self.say(
                    f"(c) latency at {o.latency_rate:,.0f} events/s for {o.latency_seconds:.0f}s"
                )
                results.latency = lat = await self.latency(worker)
                self.say(f"    p50 {lat.histogram_p50 * 1000:.0f} ms, "
                         f"p99 {lat.histogram_p99 * 1000:.0f} ms (histogram)")  # fmt: skip
        finally:
            results.peak_rss_mb = rss_mb(worker.pid, peak=True)
            results.startup_rss_mb = catch_up.startup_rss_mb[0]
            worker.stop()
        results.loans = self.sim.loans_started
        results.profile = self.profile_summary

    def _backlog_facts(self, produce_rate: float) -> dict[str, Any]:
        total = sum(self.sim.by_type.values())
        return {
            "events": self.sim.produced,
            "loans": self.sim.loans_started,
            "partitions": self.pipe.settings.partitions,
            "produce_rate": produce_rate,
            "mix": {k: round(v / total, 4) for k, v in sorted(self.sim.by_type.items())},
        }

    def fresh_pipeline(self, name: str) -> Pipeline:
        """Same broker and topics; a new consumer group/changelog, schema and data dirs."""
        settings = self.pipe.settings.model_copy(
            update={
                "app_id": f"bench-{name}",
                "pg_schema": f"{self.pipe.settings.pg_schema}_{name}",
            }
        )
        fresh = Pipeline(settings, self.pipe.root)
        fresh.ends = dict(self.pipe.ends)
        return fresh

    async def catch_up(
        self,
        pipe: Pipeline,
        names: list[str],
        keep_running: bool = False,
        profile: bool = False,
        chaos: KillPattern | None = None,
    ) -> tuple[CatchUp, WorkerProcess | None]:
        """Start `names` as workers and wait until the positions reach `pipe.ends`, applying
        `chaos` on the way. Worker CPU counts every worker process, also those killed or
        restarted (each sampled at every poll)."""
        total = sum(end + 1 for end in pipe.ends.values())
        started = time.monotonic()
        workers = [pipe.start_worker(name, web_port=free_port()) for name in names]
        profiler: Profiler | None = None
        first_at, first_done = 0.0, 0
        startup_rss: list[float] = []
        cpu_at_start: dict[str, float] = {}
        worker_cpu: dict[int, float] = {}  # pid -> CPU seconds when last seen alive
        async with _positions_reader(pipe) as read_positions:
            while True:
                done = _processed(await read_positions(), pipe.ends)
                now = time.monotonic()
                _sample_cpu(pipe.workers, worker_cpu)
                if not first_at and done > 0:
                    first_at, first_done = now, done
                    startup_rss = [rss_mb(w.pid) for w in workers]
                    cpu_at_start = self._cpu_seconds(worker_cpu)
                    if profile and self.options.profile is not None:
                        profiler = Profiler.start(workers[0].pid, self.options.profile)
                if done >= total:
                    break
                if now - started > self.options.stage_timeout:
                    raise TimeoutError(f"catch-up not done after {self.options.stage_timeout}s")
                if chaos is not None:
                    await chaos.step(pipe, done / total, now - started)
                pipe.supervise()
                await asyncio.sleep(POLL_SECONDS)
        finished = time.monotonic()
        _sample_cpu(pipe.workers, worker_cpu)
        cpu_used = _minus(self._cpu_seconds(worker_cpu), cpu_at_start)
        if profiler is not None:
            self.profile_summary = profiler.stop()
        live = [w for w in pipe.workers if w.alive()]
        result = CatchUp(
            workers=len(names),
            events=total,
            total_seconds=finished - started,
            startup_seconds=first_at - started,
            rate=(total - first_done) / max(finished - first_at, 1e-9),
            rate_with_startup=total / (finished - started),
            peak_rss_mb=[rss_mb(w.pid, peak=True) for w in live],
            startup_rss_mb=startup_rss,
            cpu_us_per_event=us_per_event(cpu_used, total - first_done),
            fail_stops=pipe.fail_stops,
            disruptions=list(chaos.done) if chaos else [],
        )
        if keep_running and len(live) == 1:
            return result, live[0]
        pipe.stop_all()
        return result, None

    def _cpu_seconds(self, worker_cpu: dict[int, float]) -> dict[str, float]:
        """CPU seconds used so far by the workers (together, as last sampled) and the known
        services."""
        used = {"workers": sum(worker_cpu.values())}
        for name, pid in self.service_pids.items():
            used[name] = cpu_seconds(pid, with_children=True)
        return used

    async def latency(self, worker: WorkerProcess) -> Latency:
        """Produce at the fixed rate on the caught-up worker; percentiles of append -> commit,
        from the worker's histogram, and per record from PostgreSQL (see `visible_latencies`
        and `event_log_latencies`)."""
        o = self.options
        port = int(worker.overrides["web_port"])
        before = await scrape_histograms(port)
        start = dict(self.pipe.ends)
        worker_cpu: dict[int, float] = {}
        _sample_cpu([worker], worker_cpu)
        cpu_before = self._cpu_seconds(worker_cpu)
        async with _positions_reader(self.pipe) as read_positions:
            watcher = asyncio.create_task(_watch_positions(read_positions))
            try:
                produced = await produce_paced(
                    self.bootstrap, self.sim, o.latency_rate, o.latency_seconds
                )
                for tp, offset in produced.ends.items():
                    self.pipe.ends[tp] = max(self.pipe.ends.get(tp, -1), offset)
                await self.pipe.wait_caught_up(timeout=o.stage_timeout)
            finally:
                watcher.cancel()
            polls = await watcher
        _sample_cpu([worker], worker_cpu)
        cpu_used = _minus(self._cpu_seconds(worker_cpu), cpu_before)
        await asyncio.sleep(0.5)  # the histogram is observed just after the commit
        after = await scrape_histograms(port)
        delta = buckets_of(histogram_delta(before, after, END_TO_END))
        batches = histogram_delta(before, after, BATCH_SIZE)
        commits = histogram_delta(before, after, COMMIT_SECONDS)
        appended = await record_timestamps(self.bootstrap, start, self.pipe.ends)
        visible = visible_latencies(appended, polls)
        logged = await self.event_log_latencies(appended)
        return Latency(
            rate_asked=o.latency_rate,
            rate_reached=produced.rate,
            events=produced.events,
            histogram_p50=histogram_quantile(delta, 0.50),
            histogram_p99=histogram_quantile(delta, 0.99),
            visible_p50=quantile(visible, 0.50),
            visible_p99=quantile(visible, 0.99),
            event_log_p50=quantile(logged, 0.50),
            event_log_p99=quantile(logged, 0.99),
            batches=int(batches.get("count", 0)),
            batch_mean=mean_of(batches),
            commit_mean=mean_of(commits),
            commit_p99=histogram_quantile(buckets_of(commits), 0.99),
            cpu_us_per_event=us_per_event(cpu_used, produced.events),
        )

    async def event_log_latencies(self, appended: dict[tuple[str, int, int], float]) -> list[float]:
        """Seconds from each record's Kafka timestamp to its `event_log.recorded_at` (taken in
        the transaction, just before its statements run: a lower bound of append -> commit)."""
        keys = list(appended)
        rows = await self.pipe.fetch(
            'SELECT topic, partition, "offset", recorded_at FROM event_log '
            'WHERE (topic, partition, "offset") IN '
            "(SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[]))",
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
        )
        return [
            r["recorded_at"].timestamp() - appended[(r["topic"], r["partition"], r["offset"])]
            for r in rows
        ]

    async def restore(self, name: str) -> Restore:
        """Restart `name` with an empty data dir; time Faust's changelog restore from its log."""
        settings = self.pipe.settings
        changelog = f"{settings.app_id}-{LOANS_TABLE}-changelog"
        tps = [TopicPartition(changelog, p) for p in range(settings.partitions)]
        records = sum((await high_watermarks(self.bootstrap, tps)).values())
        shutil.rmtree(self.pipe.root / name, ignore_errors=True)
        log_path = self.pipe.root / f"{name}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        started = time.time()
        worker = self.pipe.start_worker(name, web_port=free_port())
        try:
            began, ended = await _restore_times(worker, offset, self.options.stage_timeout)
        finally:
            worker.stop()
        seconds = max(ended - began, 1e-3)
        return Restore(records, seconds, records / seconds, began - started)

    async def rebuild(self) -> RebuildRun:
        """Run `lendstream projections rebuild` on the pipeline's schema (its worker stopped,
        so the rebuild folds up to the positions (b) and (c) stored and its swap waits for
        nothing). Its connection is found in `pg_stat_activity` by `REBUILD_APP` (the only
        change to the workers' settings); polls every `WATCH_SECONDS` time the fold and take
        the CPU baseline when the connection appears. The process is waited for without being
        reaped, so that its CPU can still be read."""
        settings = self.pipe.settings
        assert settings.pg_dsn is not None
        dsn = _with_query(settings.pg_dsn, application_name=REBUILD_APP)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LENDSTREAM_")}
        env.update(worker_env(settings.model_copy(update={"pg_dsn": dsn})))
        log_path = self.pipe.root / "rebuild.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        started = time.monotonic()
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, *REBUILD],
                env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        exited = asyncio.ensure_future(asyncio.to_thread(_wait_exited, proc.pid))
        began = 0.0  # epoch of the rebuild's connection
        swap_at, last_fold_at = 0.0, 0.0
        cpu_at_start: dict[str, float] = {}
        peak_rss = 0.0
        profiler: Profiler | None = None
        try:
            conn = await asyncpg.connect(settings.pg_dsn)
            try:
                while not exited.done():
                    if time.monotonic() - started > self.options.stage_timeout:
                        raise TimeoutError(f"rebuild not done after {self.options.stage_timeout}s")
                    peak_rss = max(peak_rss, rss_tree_mb(proc.pid))
                    row = await conn.fetchrow(
                        "SELECT extract(epoch FROM backend_start)::float8 AS began, "
                        "extract(epoch FROM xact_start)::float8 AS xact, query "
                        "FROM pg_stat_activity WHERE application_name = $1",
                        REBUILD_APP,
                    )
                    seen_at = time.time()
                    if row is not None and not began:
                        began = row["began"]
                        cpu_at_start = self._rebuild_cpu(proc.pid)
                        if self.options.profile is not None:
                            profile = self.options.profile
                            profiler = Profiler.start(proc.pid, profile.with_name(
                                f"{profile.name}-rebuild"))  # fmt: skip
                    if row is not None and not swap_at:
                        phase = _rebuild_phase(row["query"])
                        if phase == "swap" and row["xact"] is not None:
                            swap_at = row["xact"]
                        elif phase == "fold":
                            last_fold_at = seen_at
                    await asyncio.wait({exited}, timeout=WATCH_SECONDS)
            finally:
                await conn.close()
            cpu_used = _minus(self._rebuild_cpu(proc.pid), cpu_at_start)  # exited, not reaped
            proc.wait()
        finally:
            if proc.returncode is None:  # not reaped yet: the pid is still its own
                stop_process(proc.pid)
            await asyncio.gather(exited, return_exceptions=True)
        total_seconds = time.monotonic() - started
        text = log_path.read_bytes()[offset:].decode(errors="replace")
        match = _REBUILT.search(text)
        if proc.returncode != 0 or match is None or not began:
            raise AssertionError(f"the rebuild exited with {proc.returncode}:\n{text[-3000:]}")
        events, rate = int(match.group(1).replace(",", "")), float(match.group(3).replace(",", ""))
        seconds = events / rate if rate > 0 else float(match.group(2))
        fold_seconds = (swap_at or last_fold_at) - began
        profile_summary = None
        if profiler is not None:
            profile_summary = profiler.stop(REBUILD_ACTIVITIES)
        return RebuildRun(
            events=events,
            fold_seconds=fold_seconds,
            seconds=seconds,
            total_seconds=total_seconds,
            rate=events / max(fold_seconds, 1e-9),
            rate_with_swap=events / max(seconds, 1e-9),
            rate_with_startup=events / total_seconds,
            swap_seconds=max(seconds - fold_seconds, 0.0),
            swap_observed=bool(swap_at),
            peak_rss_mb=peak_rss,
            cpu_us_per_event=us_per_event(cpu_used, events),
            startup_cpu_seconds=cpu_at_start.get("rebuild", 0.0),
            profile=profile_summary,
        )

    def _rebuild_cpu(self, pid: int) -> dict[str, float]:
        """CPU seconds so far of the rebuild process (with its fold processes) and of the known
        services, with the children they reaped (a PostgreSQL backend's CPU outlives it in the postmaster's)."""
        used = {"rebuild": cpu_seconds(pid, with_children=True, with_reaped=True)}
        for name, service in self.service_pids.items():
            used[name] = cpu_seconds(service, with_children=True, with_reaped=True)
        return used

    async def floor(self, name: str, *flags: str) -> dict[str, Any]:
        """Run `tests.bench.floor` (a do-nothing agent) over everything produced so far."""
        total = sum(end + 1 for end in self.pipe.ends.values())
        root = self.pipe.root
        settings = self.pipe.settings.model_copy(
            update={"app_id": f"bench-{name}", "data_dir": root / name, "web_port": free_port()}
        )
        out = root / f"{name}.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LENDSTREAM_")}
        env.update(worker_env(settings))
        started = time.monotonic()
        with open(root / f"{name}.log", "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.bench.floor", str(total), str(out), *flags],
                env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            while proc.poll() is None:
                if time.monotonic() - started > self.options.stage_timeout:
                    raise TimeoutError(f"floor not done after {self.options.stage_timeout}s")
                await asyncio.sleep(POLL_SECONDS)
        finally:
            stop_process(proc.pid)
        if not out.exists():
            tail = (root / f"{name}.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"floor exited with {proc.returncode}:\n{tail}")
        result: dict[str, Any] = json.loads(out.read_text())
        result["total_seconds"] = time.monotonic() - started
        return result


async def _watch_positions(read: Callable[[], Any]) -> list[tuple[float, Ends]]:
    """(time, positions) every `WATCH_SECONDS` until cancelled; returns what it saw."""
    polls: list[tuple[float, Ends]] = []
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            positions = await read()
            polls.append((time.time(), positions))
            await asyncio.sleep(WATCH_SECONDS)
    return polls


def visible_latencies(
    appended: dict[tuple[str, int, int], float], polls: list[tuple[float, Ends]]
) -> list[float]:
    """Seconds from each record's Kafka timestamp to the first poll whose stored position
    covers it (records never seen covered are left out)."""
    by_partition: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for seen_at, positions in polls:
        for tp, offset in positions.items():
            history = by_partition.setdefault(tp, [])
            if not history or offset > history[-1][0]:
                history.append((offset, seen_at))
    out = []
    for (topic, partition, offset), ts in appended.items():
        history = by_partition.get((topic, partition), [])
        i = bisect.bisect_left(history, (offset, -math.inf))
        if i < len(history):
            out.append(history[i][1] - ts)
    return out


def cpu_seconds(pid: int, with_children: bool = False, with_reaped: bool = False) -> float:
    """User + system CPU seconds of a live (or exited but not reaped) process, and of its live
    children, and of the children it has reaped (waited for); 0 if it is gone."""
    try:
        process = psutil.Process(pid)
        processes = [process, *(process.children(recursive=True) if with_children else [])]
        total = 0.0
        if with_reaped:
            own = process.cpu_times()
            total += own.children_user + own.children_system
        for p in processes:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


def _sample_cpu(workers: list[WorkerProcess], seen: dict[int, float]) -> None:
    """Record the CPU seconds of each live worker by pid (a killed one keeps its last sample)."""
    for worker in workers:
        if worker.alive():
            seen[worker.pid] = max(seen.get(worker.pid, 0.0), cpu_seconds(worker.pid))


def _wait_exited(pid: int) -> None:
    """Block until child `pid` exits, leaving it unreaped (its CPU times stay readable)."""
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def _with_query(dsn: str, **params: str) -> str:
    """`dsn` with `params` added to its query string."""
    parts = urlsplit(dsn)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def _rebuild_phase(query: str) -> str:
    """`swap` for a statement of the rebuild's swap transaction, `fold` for one of its fold
    (shadow tables, writes, the live positions read unlocked), empty for BEGIN, COMMIT and the
    final shadow-schema drop (either side)."""
    if "projection_positions" in query and "FOR UPDATE" in query:
        return "swap"
    if any(marker in query for marker in SWAP_MARKERS):
        return "swap"
    if query.startswith(("BEGIN", "COMMIT")) or (
        query.startswith("DROP SCHEMA") and "CREATE SCHEMA" not in query
    ):
        return ""
    return "fold"


def us_per_event(cpu_seconds: dict[str, float], events: int) -> dict[str, float]:
    """Microseconds of CPU per event, per process name (`events` of 0 counts as 1)."""
    return {name: seconds * 1e6 / max(events, 1) for name, seconds in cpu_seconds.items()}


def _minus(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _processed(positions: Ends, ends: Ends) -> int:
    return sum(min(positions.get(tp, -1), end) + 1 for tp, end in ends.items())


@contextlib.asynccontextmanager
async def _positions_reader(pipe: Pipeline) -> AsyncIterator[Callable[[], Any]]:
    pool = await asyncpg.create_pool(pipe.settings.pg_dsn, min_size=1, max_size=1)

    async def read() -> Ends:
        try:
            return await stored_positions(pool, pipe.settings.pg_schema, "loans")
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return {}

    try:
        yield read
    finally:
        await pool.close()


async def _restore_times(worker: WorkerProcess, offset: int, timeout: float) -> tuple[float, float]:
    """Epoch seconds of Faust's restore start and end lines in the worker's log after
    `offset`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = worker.log_path.read_bytes()[offset:].decode(errors="replace")
        began = _logged_at(text, RESTORE_STARTED)
        ended = _logged_at(text, RESTORE_DONE)
        if began is not None and ended is not None:
            return began, ended
        if not worker.alive():
            raise AssertionError(f"worker exited during restore:\n{worker.log_tail()}")
        await asyncio.sleep(POLL_SECONDS)
    raise TimeoutError(f"no restore in the log after {timeout}s:\n{worker.log_tail()}")


def _logged_at(text: str, marker: str) -> float | None:
    for line in text.splitlines():
        if marker in line and (match := _LOG_TIME.match(line)):
            return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


async def ceiling(bootstrap: list[str], ends: Ends) -> dict[str, Any]:
    """Raw aiokafka consumption of every partition up to `ends`: getmany, no processing."""
    consumer = group_less_consumer(bootstrap)
    await consumer.start()
    try:
        remaining = {TopicPartition(t, p): end for (t, p), end in ends.items()}
        consumer.assign(list(remaining))
        await consumer.seek_to_beginning()
        count = 0
        started = time.monotonic()
        while remaining:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                count += len(records)
                if tp in remaining and records[-1].offset >= remaining[tp]:
                    del remaining[tp]
                    consumer.pause(tp)
        seconds = time.monotonic() - started
    finally:
        await consumer.stop()
    return {"events": count, "seconds": seconds, "rate": count / seconds}


async def record_timestamps(
    bootstrap: list[str], after: Ends, ends: Ends
) -> dict[tuple[str, int, int], float]:
    """Kafka timestamps (seconds) of the records past `after` up to `ends`."""
    wanted = {
        TopicPartition(t, p): (after.get((t, p), -1), end)
        for (t, p), end in ends.items()
        if end > after.get((t, p), -1)
    }
    out: dict[tuple[str, int, int], float] = {}
    if not wanted:
        return out
    consumer = group_less_consumer(bootstrap)
    await consumer.start()
    try:
        consumer.assign(list(wanted))
        for tp, (first, _) in wanted.items():
            consumer.seek(tp, first + 1)
        remaining = dict(wanted)
        while remaining:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    if r.offset <= wanted[tp][1]:
                        out[(tp.topic, tp.partition, r.offset)] = r.timestamp / 1000
                if tp in remaining and records and records[-1].offset >= remaining[tp][1]:
                    del remaining[tp]
                    consumer.pause(tp)
    finally:
        await consumer.stop()
    return out


END_TO_END = "lendstream_end_to_end_seconds"
BATCH_SIZE = "lendstream_projection_batch_size"
COMMIT_SECONDS = "lendstream_projection_commit_seconds"
Histograms = dict[str, dict[str, float]]  # family -> {"le" bound as text, "sum", "count"}


async def scrape_histograms(port: int, projection: str = "loans") -> Histograms:
    """Cumulative bucket counts, sum and count of the end-to-end, batch size and commit time
    histograms of `projection` on a worker's /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    out: Histograms = {END_TO_END: {}, BATCH_SIZE: {}, COMMIT_SECONDS: {}}
    for family in text_string_to_metric_families(text):
        if family.name not in out:
            continue
        for sample in family.samples:
            if sample.labels.get("projection") != projection:
                continue
            suffix = sample.name.rsplit("_", 1)[-1]
            key = sample.labels["le"] if suffix == "bucket" else suffix
            out[family.name][key] = sample.value
    return out


def histogram_delta(before: Histograms, after: Histograms, name: str) -> dict[str, float]:
    return {k: v - before[name].get(k, 0.0) for k, v in after[name].items()}


def buckets_of(histogram: dict[str, float]) -> dict[float, float]:
    return {float(k): v for k, v in histogram.items() if k not in ("sum", "count")}


def mean_of(histogram: dict[str, float]) -> float:
    count = histogram.get("count", 0.0)
    return histogram.get("sum", 0.0) / count if count else float("nan")


def histogram_quantile(cumulative: dict[float, float], q: float) -> float:
    """Like PromQL's histogram_quantile: linear within the bucket holding the quantile."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return float("nan")
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def rss_tree_mb(pid: int) -> float:
    """The peak resident set size (`VmHWM`) of a live process, plus the current one of its
    children (the rebuild's fold processes), in MiB: sampled often, the largest value is
    close to the tree's peak."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        children = []
    return rss_mb(pid, peak=True) + sum(rss_mb(child.pid) for child in children)


def rss_mb(pid: int, peak: bool = False) -> float:
    """The resident set size (`VmRSS`), or its peak so far (`VmHWM`), of a live process, in
    MiB (0 if it is gone)."""
    field_name = "VmHWM:" if peak else "VmRSS:"
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def run_benchmark(
    options: Options,
    kafka: str,
    pg_dsn: str,
    root: Path,
    say: Callable[[str], None],
    partitions: int = 8,
    schema: str = "bench",
    service_pids: dict[str, int] | None = None,
) -> Results:
    """All stages against the broker `kafka` and PostgreSQL `pg_dsn`; workers live in `root`.

    Settings not given here (batch size, pool size...) come from `LENDSTREAM_*` variables, so
    a variant can be measured by setting them. `service_pids` (e.g. broker, postgres) are
    the processes whose CPU use is reported with the workers'.
    """
    settings = Settings(
        kafka=kafka,
        pg_dsn=pg_dsn,
        pg_schema=schema,
        data_dir=root / "data",
        partitions=partitions,
        kafka_session_timeout=6.0,
        kafka_heartbeat_interval=1.0,
        payout_saga=False,  # the generated traffic carries its payout events
        _env_file=None,  # type: ignore[call-arg]
    )
    pipeline = Pipeline(settings, root)
    try:
        return await Bench(pipeline, options, say, service_pids).run(environment(settings))
    finally:
        pipeline.stop_all()


def environment(settings: Settings) -> dict[str, Any]:
    """What the figures depend on besides the code: machine, load, versions, settings."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "faust": importlib.metadata.version("faust-streaming"),
        "aiokafka": importlib.metadata.version("aiokafka"),
        "commit": commit,
        "batch_max": settings.batch_max,
        "batch_within": settings.batch_within,
        "pg_pool_max": settings.pg_pool_max,
    }
