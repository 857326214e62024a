"""`lendstream dev --simulate` as a user runs it: its own embedded broker and PostgreSQL, a
worker, the payout gateway simulator and the traffic, until Ctrl-C (SIGINT) stops all of it;
and the traffic's repayments following the payouts on a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from aiokafka.structs import TopicPartition

from lendstream.admin import ensure_topics
from lendstream.devstack import ENDPOINTS_FILE, dev_endpoints, follow_payouts
from lendstream.embedded import Broker, free_port, stop_process
from lendstream.kafka import high_watermarks
from lendstream.producer import produce_all, settings_producer
from lendstream.settings import Settings
from lendstream.simulation import PARTNERS, Produced, Repayments
from lendstream.topics import PAYOUT_EVENTS, TREASURY_EVENTS
from tests.unit.test_simulation import approved_loans, paid_out

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
PARTITIONS = 2
SIMULATOR_STARTED = r"payout gateway (http://\S+) \(simulator pid (\d+)"


class Output:
    """The lines a child process prints, read on a thread so that waiting can be bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stream: Iterator[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first line (from the start) matching `pattern`; fails if the output ends."""
        while True:
            for line in self.lines:
                if found := re.search(pattern, line):
                    return found
            line = self._queue.get()
            if line is None:
                raise AssertionError(f"no line matches {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)

    def so_far(self) -> str:
        """The lines printed until now, without waiting for more."""
        while not self._queue.empty():
            if (line := self._queue.get()) is not None:
                self.lines.append(line)
        return "\n".join(self.lines)

    def rest(self) -> str:
        while (line := self._queue.get()) is not None:
            self.lines.append(line)
        return "\n".join(self.lines)


def alive(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def saga_rows(pg_dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM lendstream.saga_instances GROUP BY status"
        )
    finally:
        await conn.close()
    return {row["status"]: row["n"] for row in rows}


def wait_for_saga_rows(output: Output, pg_dsn: str) -> None:
    """Sagas appear in `saga_instances`, the progress line counts completed ones and payouts
    the simulator accepted, and paid-out loans get repaid (the traffic follows the payouts)."""
    output.wait_for(r"payout sagas: .*completed=[1-9].* \| gateway simulator: [1-9]\d* payouts")
    assert asyncio.run(saga_rows(pg_dsn)).get("completed", 0) > 0
    output.wait_for(r"loans: .*repaying=[1-9]")


def test_dev_simulate_runs_the_gateway_simulator_and_stops_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENDSTREAM_")}
    env.update(
        LENDSTREAM_DATA_DIR=str(data_dir),
        LENDSTREAM_PARTITIONS=str(PARTITIONS),
        LENDSTREAM_WEB_PORT=str(free_port()),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "lendstream", "dev", "--simulate", "--rate", "100"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output = Output(proc)
    dev_children: list[psutil.Process] = []
    try:
        run_until_ctrl_c(proc, output, data_dir, dev_children)
    finally:
        stop_leftovers(output, dev_children, data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def record_children(proc: subprocess.Popen[str], dev_children: list[psutil.Process]) -> None:
    """Add `dev`'s descendants (broker, simulator, worker) to `dev_children`, as processes (a
    `psutil.Process` checks its start time before a signal: a reused pid is not hit)."""
    with contextlib.suppress(psutil.Error):
        known = {child.pid for child in dev_children}
        dev_children.extend(c for c in psutil.Process(proc.pid).children(recursive=True)
                            if c.pid not in known)  # fmt: skip


def stop_leftovers(output: Output, dev_children: list[psutil.Process], data_dir: Path) -> None:
    """Whatever failed — `dev` crashing or stuck at Ctrl-C included — leave none of its
    processes behind: the children it had (broker, simulator, worker), the simulator it
    announced, and the PostgreSQL that `pg_ctl` detached from it (its `postmaster.pid`, if the
    process with that pid serves this data dir). Each is stopped by its pid."""
    leftovers = list(dev_children)
    for line in output.lines:
        if started := re.search(SIMULATOR_STARTED, line):
            with contextlib.suppress(psutil.Error):
                leftovers.append(psutil.Process(int(started.group(2))))
    running = [p for p in leftovers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for process in running:  # the worker stops in time only while its broker runs: all at once
        with contextlib.suppress(psutil.Error):
            process.terminate()
    for process in psutil.wait_procs(running, timeout=10)[1]:
        with contextlib.suppress(psutil.Error):
            process.kill()
    stop_postmaster(data_dir / "pg")


def stop_postmaster(pg_dir: Path) -> None:
    """Fast shutdown (SIGINT) of the PostgreSQL serving `pg_dir`, if one still does."""
    try:
        postmaster = psutil.Process(int((pg_dir / "postmaster.pid").read_text().split()[0]))
        if str(pg_dir.resolve()) not in " ".join(postmaster.cmdline()):
            return  # a stale file, and its pid now someone else's
        postmaster.send_signal(signal.SIGINT)
        postmaster.wait(timeout=30)
    except (OSError, ValueError, IndexError):
        return
    except psutil.TimeoutExpired:
        postmaster.kill()
    except psutil.Error:
        return


def stop_diagnostics(output: Output, data_dir: Path) -> str:
    """What `dev` printed so far, its processes and the end of the worker's log: for a `dev`
    that did not stop in time."""
    time.sleep(1)  # for the reader thread to catch up
    printed = output.so_far()
    processes = subprocess.run(["ps", "-eo", "pid,ppid,etime,args"], capture_output=True,
                               text=True).stdout  # fmt: skip
    log = data_dir / "logs" / "worker.log"
    tail = log.read_text(errors="replace").splitlines()[-60:] if log.exists() else []
    return "\n".join(["dev did not stop within 120 s; its output:", printed,
                      "processes:", processes, f"end of {log}:", *tail])  # fmt: skip


def run_until_ctrl_c(
    proc: subprocess.Popen[str], output: Output, data_dir: Path, dev_children: list[psutil.Process]
) -> None:
    """Run `dev` until its traffic reaches the sagas, Ctrl-C it, and check that it stopped
    everything. `dev_children` gets its descendants: once all have started, and again at
    Ctrl-C."""
    try:
        started = output.wait_for(SIMULATOR_STARTED)
        url, simulator_pid = started.group(1), int(started.group(2))
        output.wait_for(r"worker pid \d+")  # the endpoints file is written by then
        record_children(proc, dev_children)
        endpoints = dev_endpoints(data_dir)
        assert endpoints is not None and endpoints["gateway_url"] == url
        with urllib.request.urlopen(url + "/health", timeout=5) as health:
            assert health.status == 200
        output.wait_for(r"loans: (?!no loans yet)")  # traffic flows: the credit lines came first
        lines = asyncio.run(high_watermarks(
            endpoints["kafka"].removeprefix("kafka://"),
            [TopicPartition(TREASURY_EVENTS.name, p) for p in range(PARTITIONS)],
        ))  # fmt: skip
        assert sum(lines.values()) == PARTNERS  # one credit line per partner
        output.wait_for(r"payout sagas: running=\d+ .* \| gateway simulator: \d+ payouts accepted")
        wait_for_saga_rows(output, endpoints["pg_dsn"])
    finally:
        record_children(proc, dev_children)  # whatever came up, if it failed before
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired as stuck:
            raise AssertionError(stop_diagnostics(output, data_dir)) from stuck
        finally:
            stop_process(proc.pid)
    everything = output.rest()
    assert proc.returncode == 130, everything
    assert "stopping payout gateway simulator" in everything
    assert everything.splitlines()[-1].endswith("stopped")
    assert not alive(simulator_pid)
    assert not [p for p in dev_children if alive(p.pid)]  # broker and worker stopped too
    assert not (data_dir / "pg" / "postmaster.pid").exists()  # PostgreSQL shut down
    assert not (data_dir / ENDPOINTS_FILE).exists()


async def test_repayments_follow_the_payouts_that_come_after_the_traffic_started(
    broker: Broker, tmp_path: Path
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        kafka=broker.url, partitions=PARTITIONS, data_dir=tmp_path, _env_file=None
    )
    await ensure_topics(settings)
    earlier, loan = approved_loans(seed=3)[:2]
    repayments = Repayments(seed=3)
    for event in earlier + loan:
        repayments.observe(event)
    producer = settings_producer(settings)
    await producer.start()
    await produce_all(producer, [Produced(PAYOUT_EVENTS.name, earlier[0].key, paid_out(earlier))])
    due: deque[Produced] = deque()
    follower = asyncio.create_task(follow_payouts(settings, repayments, due))
    try:
        while not due:  # until the follower has started reading, a payout may pass unseen
            await produce_all(producer, [Produced(PAYOUT_EVENTS.name, loan[0].key, paid_out(loan))])
            await asyncio.sleep(0.2)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await producer.stop()
    expected = Repayments(seed=3)
    for event in loan:
        expected.observe(event)
    assert list(due) == expected.on_payout_event(paid_out(loan))
    assert len(repayments) == 1  # the loan paid out before the traffic started still waits
