"""Peak RSS of RocksDB alone: the tables' partition databases with a budget per database (Faust's
way, with the bounds lendstream used before `tables/store.py`) against one budget per process
(`tables/store.py`), each in a fresh process so that `VmHWM` is its own.

Each run opens `--databases` databases (2 tables x 8 partitions by default), then does
`--writes` read-modify-writes of values of ~0.4 to ~1.5 KB over `--keys` keys, as the loan
processor does to the `loans` table, and prints the process's RSS as it goes.

    python -m tests.bench.rocksdb_memory [--writes 1300000] [--keys 100000] [--databases 16]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rocksdict
from faust.stores.rocksdb import RocksDBOptions

from lendstream.settings import Settings
from lendstream.tables import store

MIB = store.MIB
#: what `tables.ROCKSDB_OPTIONS` was, per partition database, before the shared budget
PER_DATABASE = {"write_buffer_size": 8 * MIB, "max_write_buffer_number": 2}
PER_DATABASE_CACHE = 16 * MIB
MODES = ("per-database", "shared")


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def open_databases(mode: str, root: Path, count: int) -> list[rocksdict.Rdict]:
    if mode == "shared":
        options = store.SharedBudgetOptions(**store.options(Settings()))
        return [options.open(root / str(n)) for n in range(count)]
    per_database = RocksDBOptions(
        **PER_DATABASE, block_cache_size=PER_DATABASE_CACHE, use_rocksdict=True
    )
    return [per_database.open(root / str(n)) for n in range(count)]


def run_one(mode: str, writes: int, keys: int, databases: int) -> None:
    """In this process: the writes, printing `rss <writes done> <VmRSS KiB> <VmHWM KiB>`."""
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="rocksdb-memory-") as tmp:
        dbs = open_databases(mode, Path(tmp), databases)
        started = time.perf_counter()
        for done in range(writes):
            key = rng.randrange(keys)
            db = dbs[key % databases]
            name = b"loan-%08d" % key
            old = db.get(name)
            db[name] = old[:1500] + rng.randbytes(16).hex().encode() if old else rng.randbytes(400)
            if done % (writes // 10 or 1) == 0:
                print("rss", done, *rss_kib(), flush=True)
        print("rss", writes, *rss_kib(), flush=True)
        print("seconds", time.perf_counter() - started, flush=True)
        for db in dbs:
            db.close()


def measure(mode: str, writes: int, keys: int, databases: int) -> dict[str, float]:
    """Run `mode` in a child process; its peak RSS (MiB) and writes per second."""
    args = [sys.executable, "-m", __spec__.name if __spec__ else "tests.bench.rocksdb_memory"]
    args += ["--child", mode, "--writes", str(writes), "--keys", str(keys)]
    args += ["--databases", str(databases)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout.split("\n")
    rss = [line.split() for line in out if line.startswith("rss ")]
    seconds = next(float(line.split()[1]) for line in out if line.startswith("seconds "))
    return {
        "peak_mib": max(int(row[3]) for row in rss) / 1024,
        "end_mib": int(rss[-1][2]) / 1024,
        "writes_per_s": writes / seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writes", type=int, default=1_300_000)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--databases", type=int, default=16)
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_one(args.child, args.writes, args.keys, args.databases)
        return
    print(
        f"{args.databases} databases, {args.keys:,} keys, {args.writes:,} writes (pid {os.getpid()})"
    )
    print(f"{'budget':<14}{'peak RSS MiB':>14}{'RSS at end MiB':>16}{'writes/s':>12}")
    for mode in MODES:
        m = measure(mode, args.writes, args.keys, args.databases)
        print(f"{mode:<14}{m['peak_mib']:>14.0f}{m['end_mib']:>16.0f}{m['writes_per_s']:>12,.0f}")


if __name__ == "__main__":
    main()
