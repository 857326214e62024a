"""Sampling a worker with py-spy, and a text summary of where its CPU goes.

`Profiler.start(pid, out)` runs `py-spy record --format raw` (folded stacks) against a running
process until `stop()`; `summarise` turns folded stacks into percentages by thread, by package
and by function (self and inclusive). Only samples of threads that were running count
(py-spy drops idle ones), so percentages are shares of the CPU the process used.

Standalone: `python -m tests.bench.profile STACKS.folded` prints the summary of a raw profile.
"""

from __future__ import annotations

import functools
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lendstream.cli

SAMPLES_PER_SECOND = 100
TOP = 30
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")
_LENDSTREAM = Path(lendstream.cli.__file__).parent
_STDLIB = Path(sysconfig.get_paths()["stdlib"])


#: Activity rules: a sample was doing the first rule's activity whose any substring is in its
#: stack ("other" when none is).
Rules = tuple[tuple[str, tuple[str, ...]], ...]

#: What a worker sample was doing.
ACTIVITIES: Rules = (
    ("processor: contiguity guard", ("ContiguityGuard.check",)),
    ("processor: decode + validate (to_message)", ("to_message (",)),
    ("processor: load states (table get, decode, PG newer)", ("LoanProcessor.load",)),
    ("processor: fold (sequencing.receive, evolve)", ("receive (domain",)),
    ("processor: PostgreSQL commit (client side)", ("CheckpointedWriter",)),
    ("processor: metrics (events_total)", ("LoanProcessor.count",)),
    ("processor: table values encoded", ("encode (tables/loans.py",)),
    ("processor: table writes (Faust set, changelog enqueue)", ("__setitem__",)),
    ("processor: other", ("LoanProcessor.process", "LoanProcessor.prepare")),
    ("Faust/aiokafka: producing changelog records",
     ("Sender.", "SendProduceReqHandler", "ProducerBuffer", "Topic._on_published",
      "Topic.publish_message", "AIOKafkaProducer", "MessageAccumulator")),
    ("Faust: per-message delivery (drain, conductor, stream)",
     ("Consumer._drain_messages", "Conductor.", "Stream._c_aiter", "Stream.take_events",
      "Stream._passive_drainer", "Fetcher._fetcher")),
    ("Faust: offset commits", ("Consumer._commit_handler", "Consumer.commit")),
    ("aiokafka: network reads", ("AIOKafkaConnection._read",)),
    ("event loop scheduling (select, run_once)", ("EpollSelector.select", "_run_once")),
)  # fmt: skip


def activity(stack: str, rules: Rules = ACTIVITIES) -> str:
    for name, needles in rules:
        if any(needle in stack for needle in needles):
            return name
    return "other"


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    return found


@dataclass
class Profiler:
    proc: subprocess.Popen[bytes]
    stacks: Path
    started: float

    @classmethod
    def start(cls, pid: int, out: Path) -> Profiler:
        """Sample `pid` into `out` + `.folded` (raw folded stacks)."""
        out.parent.mkdir(parents=True, exist_ok=True)
        stacks = out.with_suffix(".folded")
        command = [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--threads",
                   "--nonblocking", "--rate", str(SAMPLES_PER_SECOND), "--output", str(stacks)]  # fmt: skip
        with open(out.with_suffix(".py-spy.log"), "wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        return cls(proc, stacks, time.monotonic())

    def stop(self, activities: Rules = ACTIVITIES) -> dict[str, Any]:
        """Stop sampling (SIGINT makes py-spy write its output); summary (samples by
        `activities` among others), also as text beside the stacks (`.txt`)."""
        seconds = time.monotonic() - self.started
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        summary = summarise(self.stacks.read_text(), seconds, activities)
        self.stacks.with_suffix(".txt").write_text(format_summary(summary))
        summary["stacks"] = str(self.stacks)
        return summary


def _frame_name(frame: str) -> tuple[str, str]:
    """(`function (path)`, package) of one folded frame. py-spy shortens paths to be relative
    to their `sys.path` entry (`faust/streams.py`; lendstream's own as `agents/loans.py`)."""
    match = _FRAME.match(frame)
    if not match:
        return frame, "?"
    func, path = match.group("func"), match.group("path")
    return f"{func} ({path})", _package(path)


@functools.cache
def _package(path: str) -> str:
    first = path.split("/")[0]
    if path.startswith("<"):
        return "python"
    if (_LENDSTREAM / path).exists():
        return "lendstream"
    if (_STDLIB / path).exists():
        return "asyncio" if first == "asyncio" else "stdlib"
    return first.removesuffix(".py")


def summarise(
    folded: str, seconds: float | None = None, rules: Rules = ACTIVITIES
) -> dict[str, Any]:
    """Percentages of samples by thread, by activity (`rules`), by package (self), by function
    (self, inclusive)."""
    threads: Counter[str] = Counter()
    activities: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread ")), "thread (?)")
        frames = [f for f in frames if not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        total += count
        threads[thread] += count
        activities[activity(";".join(frames), rules)] += count
        names = [_frame_name(f) for f in frames]
        leaf, package = names[-1]
        own[leaf] += count
        packages[package] += count
        for name in {n for n, _ in names}:
            inclusive[name] += count

    def shares(counter: Counter[str], top: int | None = None) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(total, 1), 2)) for k, v in counter.most_common(top)]

    busy = {
        thread: round(count / (seconds * SAMPLES_PER_SECOND), 3)
        for thread, count in threads.items()
        if seconds
    }
    return {
        "samples": total,
        "seconds": seconds,
        "threads": shares(threads),
        "thread_busy": busy,
        "activities": shares(activities),
        "packages": shares(packages),
        "self": shares(own, TOP),
        "inclusive": shares(inclusive, TOP),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as plain text tables (percent of the samples of running threads)."""
    lines = [f"{summary['samples']} samples over {summary['seconds'] or 0:.0f}s"]
    busy = summary.get("thread_busy", {})
    sections = [("thread", "threads"), ("activity", "activities"), ("package (self)", "packages"),
                ("function, self", "self"), ("function, inclusive", "inclusive")]  # fmt: skip
    for title, key in sections:
        lines += ["", f"{'%':>6}  {title}"]
        for name, percent in summary[key]:
            extra = f"  (busy {busy[name]:.0%} of the time)" if name in busy else ""
            lines.append(f"{percent:6.1f}  {name}{extra}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(format_summary(summarise(Path(sys.argv[1]).read_text())), end="")
