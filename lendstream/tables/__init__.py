"""lendstream's changelog-backed RocksDB tables (`loans`, `credit_lines`)."""

from __future__ import annotations

from typing import Any

#: RocksDB options of every table, per partition database (Faust opens one per partition).
#: Faust's defaults are 64 MiB write buffers, up to 3 of them, and a 2 GiB block cache per
#: partition: with 8 partitions a worker's memory grows with the writes it has processed (the
#: write buffers fill before they are flushed) towards gigabytes, whatever the number of loans.
#: These bound it to about 8 * (2 * 8 + 16) = 256 MiB for 8 partitions; reads are served from
#: the block cache and the OS page cache.
ROCKSDB_OPTIONS: dict[str, Any] = {
    "write_buffer_size": 8 * 1024**2,
    "max_write_buffer_number": 2,
    "block_cache_size": 16 * 1024**2,
}
