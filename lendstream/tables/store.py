"""The RocksDB store of lendstream's tables: Faust's, with one memory budget per process.

Faust opens one RocksDB database per table partition and gives each its own block cache and
write buffers. A worker's memory then grows with the writes and reads it has processed until
every database's buffers and cache are full, and the ceiling grows with the partitions it holds
(active and standby): 2 tables x 8 partitions x (2 x 8 MiB buffers + 16 MiB cache) = 512 MiB,
whatever the number of loans. Measured with 16 databases, 100,000 keys and 1.3 million writes
(`python -m tests.bench.rocksdb_memory`): peak RSS 455 MiB with a cache and buffers per
database, 166 MiB with them shared, at 11% fewer writes per second.

Here every database of the process shares one LRU block cache and one write buffer manager
(`rocksdb_block_cache_mb`, `rocksdb_write_buffer_mb`). The manager flushes the largest memtable
when the total nears its budget; it does not stall writers. The data and its durability are
unchanged: only where RocksDB keeps its caches and memtables differs.

Use `store_url()` as the app's `store` and `options(settings)` as each table's `options`.
"""

from __future__ import annotations

from typing import Any

import rocksdict
from faust.stores import STORES
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as FaustRocksDBStore

from lendstream.settings import Settings

SCHEME = "lendstream-rocksdb"
MIB = 1024**2

#: Per database, under the shared budget: a memtable is flushed at 8 MiB at the latest.
PER_DATABASE: dict[str, Any] = {"write_buffer_size": 8 * MIB, "max_write_buffer_number": 2}

_budgets: dict[tuple[int, int], tuple[rocksdict.Cache, rocksdict.WriteBufferManager]] = {}


def store_url() -> str:
    """The Faust `store` URL that selects this store (registered when this module is imported)."""
    return f"{SCHEME}://"


def options(settings: Settings) -> dict[str, Any]:
    """A table's `options`: a fresh dict each time, because Faust's store pops keys from it."""
    return {
        **PER_DATABASE,
        "shared_block_cache_size": settings.rocksdb_block_cache_mb * MIB,
        "shared_write_buffer_size": settings.rocksdb_write_buffer_mb * MIB,
    }


def shared_budget(
    block_cache_size: int, write_buffer_size: int
) -> tuple[rocksdict.Cache, rocksdict.WriteBufferManager]:
    """The process's block cache and write buffer manager of these sizes, made once."""
    key = (block_cache_size, write_buffer_size)
    if key not in _budgets:
        _budgets[key] = (
            rocksdict.Cache(block_cache_size),
            rocksdict.WriteBufferManager(write_buffer_size, False),
        )
    return _budgets[key]


class SharedBudgetOptions(RocksDBOptions):
    """Faust's options (rocksdict driver) with the process's shared cache and buffer manager;
    Faust's `open` opens each database with them (`as_options`)."""

    def __init__(
        self, shared_block_cache_size: int, shared_write_buffer_size: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs, use_rocksdict=True)
        self.cache, self.write_buffers = shared_budget(
            shared_block_cache_size, shared_write_buffer_size
        )

    def as_options(self) -> rocksdict.Options:
        db_options = rocksdict.Options(raw_mode=True)
        db_options.create_if_missing(True)
        if self.max_open_files is not None:
            db_options.set_max_open_files(self.max_open_files)
        db_options.set_write_buffer_size(self.write_buffer_size)
        db_options.set_max_write_buffer_number(self.max_write_buffer_number)
        db_options.set_target_file_size_base(self.target_file_size_base)
        db_options.set_write_buffer_manager(self.write_buffers)
        table_options = rocksdict.BlockBasedOptions()
        table_options.set_bloom_filter(self.bloom_filter_size, True)
        table_options.set_block_cache(self.cache)
        table_options.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        db_options.set_block_based_table_factory(table_options)
        return db_options


class Store(FaustRocksDBStore):
    """Faust's RocksDB store, opening its databases with `SharedBudgetOptions`.

    Fails at table creation (not at first use) if the options lack the shared sizes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs, driver="rocksdict")
        self.rocksdb_options = SharedBudgetOptions(**dict(self.options or {}))


STORES.aliases[SCHEME] = f"{__name__}:Store"
