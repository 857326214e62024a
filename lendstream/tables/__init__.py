"""lendstream's changelog-backed RocksDB tables (`loans`, `credit_lines`), stored by
`lendstream.tables.store` (one memory budget per process)."""
