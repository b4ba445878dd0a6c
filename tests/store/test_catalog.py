"""The catalog file: written in a storage format older DuckDB CLIs open, atomically, always usable."""

from __future__ import annotations

from pathlib import Path

import duckdb

from accelmon.store import TABLES, Store
from accelmon.store.catalog import CATALOG_STORAGE_VERSION, catalog_storage_version

V1_0_0 = 64  # storage version number of DuckDB v1.0.0 files (the oldest a 1.x CLI writes and reads)


def _declared(path: Path) -> str:
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{path}' AS c (READ_ONLY)")
        return str(con.execute("SELECT tags['storage_version'] FROM duckdb_databases() "
                               "WHERE database_name = 'c'").fetchone()[0])
    finally:
        con.close()


def _views_answer(path: Path) -> None:
    con = duckdb.connect(str(path), read_only=True)
    try:
        for name in TABLES:
            con.execute(f"SELECT count(*) FROM {name}").fetchone()
    finally:
        con.close()


def test_catalog_declares_storage_version_v1_0_0(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.ensure_catalog()
    assert CATALOG_STORAGE_VERSION == "v1.0.0"
    assert catalog_storage_version(store.catalog_path) == V1_0_0
    assert _declared(store.catalog_path) == "v1.0.0+"
    _views_answer(store.catalog_path)


def test_a_catalog_in_the_default_newer_format_is_replaced(tmp_path: Path) -> None:
    store = Store(tmp_path)
    con = duckdb.connect(str(store.catalog_path))  # what the old code wrote: duckdb's default format
    con.execute("CREATE VIEW old AS SELECT 1 AS a")
    con.close()
    assert catalog_storage_version(store.catalog_path) > V1_0_0
    assert store.ensure_catalog()
    assert catalog_storage_version(store.catalog_path) == V1_0_0
    _views_answer(store.catalog_path)


def test_an_unreadable_catalog_is_rewritten(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.catalog_path.write_bytes(b"\0" * 5000)
    assert store.ensure_catalog()
    _views_answer(store.catalog_path)
    assert not list(tmp_path.glob(".tmp-catalog-*"))


def test_the_daemons_store_quarantines_a_bad_file_on_the_first_failing_view(tmp_path: Path) -> None:
    import datetime as dt
    import logging

    store = Store(tmp_path)
    t0 = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    for k in range(3):
        store.append("nvlink_sample", [{"ts": t0 + dt.timedelta(seconds=k), "gpu_uuid": "GPU-1", "link": k}])
    bad = store.files("nvlink_sample")[-1]
    raw = bad.read_bytes()
    bad.write_bytes(raw[:20])
    store.quarantine_bad_files = True  # what the daemon sets in prepare()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("accelmon.store").addHandler(handler)
    try:
        assert store.connect().execute("SELECT count(*) FROM nvlink_sample").fetchone()[0] == 2
        assert store.connect().execute("SELECT count(*) FROM nvlink_sample").fetchone()[0] == 2
    finally:
        logging.getLogger("accelmon.store").removeHandler(handler)
    moved = (tmp_path / "quarantine" / "tables" / "nvlink_sample" / f"shard={store.shard}" / bad.parent.parent.name
             / bad.name)
    assert moved.read_bytes() == raw[:20] and not bad.exists()
    named = [r.getMessage() for r in records if bad.name in r.getMessage()]
    assert len(named) == 1 and "moved to" in named[0]
    assert store.ensure_catalog()
    _views_answer(store.catalog_path)
