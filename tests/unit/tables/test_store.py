"""The tables' RocksDB store: one block cache and one write buffer budget per process."""

from __future__ import annotations

from pathlib import Path

from faust.stores import by_url

from lendstream.settings import Settings
from lendstream.tables import store
from tests.offline_app import offline_app


def test_the_store_url_selects_the_shared_budget_store() -> None:
    assert by_url(store.store_url()) is store.Store


def test_options_are_a_fresh_dict_with_the_settings_budget() -> None:
    settings = Settings(rocksdb_block_cache_mb=3, rocksdb_write_buffer_mb=5)
    first, second = store.options(settings), store.options(settings)
    assert first == second and first is not second
    assert first["shared_block_cache_size"] == 3 * store.MIB
    assert first["shared_write_buffer_size"] == 5 * store.MIB


def test_every_database_of_a_budget_shares_one_cache_and_buffer_manager() -> None:
    options = store.options(Settings(rocksdb_block_cache_mb=2, rocksdb_write_buffer_mb=4))
    one = store.SharedBudgetOptions(**options)
    two = store.SharedBudgetOptions(
        **store.options(Settings(rocksdb_block_cache_mb=2, rocksdb_write_buffer_mb=4))
    )
    other = store.SharedBudgetOptions(**store.options(Settings(rocksdb_block_cache_mb=7)))
    assert one.cache is two.cache and one.write_buffers is two.write_buffers
    assert other.cache is not one.cache
    assert one.write_buffers.get_buffer_size() == 4 * store.MIB


def test_databases_opened_with_the_shared_budget_keep_their_data(tmp_path: Path) -> None:
    options = store.SharedBudgetOptions(**store.options(Settings(rocksdb_write_buffer_mb=1)))
    dbs = [options.open(tmp_path / str(n)) for n in range(3)]
    for n, db in enumerate(dbs):
        for key in range(2_000):  # past the 1 MiB budget: memtables are flushed
            db[b"k%05d" % key] = b"%d" % n * 500
    for db in dbs:
        db.close()
    reopened = [options.open(tmp_path / str(n)) for n in range(3)]
    assert [db[b"k01999"] for db in reopened] == [b"%d" % n * 500 for n in range(3)]
    for db in reopened:
        db.close()


def test_the_worker_s_tables_are_stored_with_the_settings_budget(tmp_path: Path) -> None:
    app = offline_app(tmp_path, rocksdb_block_cache_mb=5, rocksdb_write_buffer_mb=6)
    assert set(app.tables) == {"loans", "credit_lines"}
    for table in app.tables.values():
        stored = table.data
        assert isinstance(stored, store.Store)
        assert isinstance(stored.rocksdb_options, store.SharedBudgetOptions)
        assert stored.rocksdb_options.write_buffers.get_buffer_size() == 6 * store.MIB
