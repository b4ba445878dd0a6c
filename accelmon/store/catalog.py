"""DuckDB views over the Parquet tables, and the small catalog file users open.

The catalog file ``<data-dir>/accelmon.duckdb`` holds views only (globs over the Parquet
files), so it never needs writing while the daemon runs: new files show up in the views on
the next query. The daemon (re)writes it at start-up for a few milliseconds; if a user holds
it open at that moment, the write is skipped - the views it already has stay valid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from accelmon.store import check
from accelmon.store.layout import Layout
from accelmon.store.schema import TABLES
from accelmon.store.views import VIEWS

__all__ = ["VIEWS", "define_views", "table_view_sql", "view_statements", "write_catalog"]

log = logging.getLogger(__name__)

CATALOG_VERSION = 1
# Storage format of the catalog file: v1.0.0 is readable by DuckDB CLIs from 1.0 on (a 2.x
# default-format file is not); the file holds views only, which need nothing newer.
CATALOG_STORAGE_VERSION = "v1.0.0"

def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _duck_type(typ: pa.DataType) -> str:
    if pa.types.is_list(typ):
        return _duck_type(typ.value_type) + "[]"
    if pa.types.is_timestamp(typ):
        return "TIMESTAMP WITH TIME ZONE" if typ.tz else "TIMESTAMP"
    return _DUCK_TYPES[str(typ)]


_DUCK_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "int32": "INTEGER", "int16": "SMALLINT",
               "float": "FLOAT", "double": "DOUBLE", "bool": "BOOLEAN"}


def table_view_sql(store: Layout, name: str, files: list[Path] | None = None) -> str:
    """The raw table's view: all of its partitions in every shard (``shard=*/date=*`` only, so a
    stray entry such as a ``.tmp-link-*`` left by a kill never reaches the reader), or exactly
    ``files``; a typed empty relation when ``files`` is empty. The hive keys become the columns
    ``date`` (DATE) and ``shard`` (VARCHAR, typed explicitly: a shard named ``2024`` must not turn
    the column into a number)."""
    if files is None:
        src = _q(store.table_glob(name))
    elif files:
        src = "[" + ", ".join(_q(str(f)) for f in files) + "]"
    else:
        t = TABLES[name]
        cols = ", ".join(f"CAST(NULL AS {_duck_type(c.type)}) AS {c.name}" for c in t.columns)
        return (f"CREATE OR REPLACE VIEW {name} AS SELECT {cols}, CAST(NULL AS DATE) AS date, "
                "CAST(NULL AS VARCHAR) AS shard WHERE false")
    legacy = "shard=" not in src  # a store still in the unsharded layout (read-only): no shard key
    hive = "{'date': DATE}" if legacy else "{'date': DATE, 'shard': VARCHAR}"
    extra = ", CAST(NULL AS VARCHAR) AS shard" if legacy else ""
    return (f"CREATE OR REPLACE VIEW {name} AS SELECT *{extra} FROM read_parquet("
            f"{src}, hive_partitioning = true, hive_types = {hive}, union_by_name = true)")


def view_statements(store: Layout) -> list[str]:
    stmts = [table_view_sql(store, name) for name in TABLES]
    for name, (_doc, sql) in VIEWS.items():
        stmts.append(f"CREATE OR REPLACE VIEW {name} AS {sql.strip()}")
    return stmts


def define_views(con: Any, store: Layout) -> list[Path]:
    """Define every table and view on ``con``. A table whose files cannot all be read does not
    stop the others: its unreadable files are found (Parquet footer check), reported once by
    name, quarantined when the store is set to (the daemon), else left out of this
    connection's view. Returns the files left out."""
    left_out: list[Path] = []
    for name in TABLES:
        try:
            con.execute(table_view_sql(store, name))
            continue
        except duckdb.Error:
            bad = check.find_bad_files(store, [name], deep=False)
            if not bad and not store.files(name):  # no file at all (e.g. a read-only copy without them)
                con.execute(table_view_sql(store, name, []))
                continue
            if not bad:
                raise
        own = [b for b in bad if b.shard in ("", store.shard)]  # never another host's shard
        if store.quarantine_bad_files and store.writable and own:
            for b in own:
                check.quarantine(store, b)
            with contextlib.suppress(duckdb.Error):
                con.execute(table_view_sql(store, name))
                continue
            bad = check.find_bad_files(store, [name], deep=False)
        check.report_bad(store, bad)
        skip = {b.path for b in bad}
        left_out += sorted(skip)
        good = [f for f in store.files(name) if f not in skip]
        con.execute(table_view_sql(store, name, good))
    for name, (_doc, sql) in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql.strip()}")
    return left_out


def write_catalog(store: Layout) -> bool:
    """Write the catalog file: views only, in an older storage format, atomically.

    Written to a temp file and renamed over ``accelmon.duckdb``, so a crash leaves the old
    catalog or the new one, never a broken one. Skipped (returns False) while another process
    holds the file open - its views stay valid."""
    path = store.catalog_path
    if path.exists():
        try:
            duckdb.connect(str(path)).close()  # probe: does another process hold it?
        except duckdb.Error as e:
            msg = str(e).lower()
            if "lock" in msg or "different configuration" in msg:
                log.info("catalog %s is held open by another process; keeping its views", path)
                return False
            log.warning("catalog %s: unreadable (%s); writing a new one", path, str(e).splitlines()[0])
    tmp = path.with_name(f".tmp-catalog-{uuid.uuid4().hex}.duckdb")
    con = duckdb.connect(":memory:")
    try:
        # DuckDB (PR duckdb/duckdb#15794): "the storage version is instead specified on ATTACH ...
        # we can target the storage version towards the desired supported version when creating a
        # new database"; an existing file keeps its own version, hence a fresh file every time.
        # v1.0.0 (header version 64) opens in every DuckDB >= 1.0; a 2.x default file does not.
        con.execute(f"ATTACH {_q(str(tmp))} AS accelmon_catalog (STORAGE_VERSION {_q(CATALOG_STORAGE_VERSION)})")
        con.execute("USE accelmon_catalog")
        define_views(con, store)
        con.execute("CREATE OR REPLACE TABLE accelmon_meta (key VARCHAR, value VARCHAR)")
        con.execute(
            "INSERT INTO accelmon_meta VALUES ('catalog_version', ?), ('data_dir', ?), ('storage_version', ?)",
            [str(CATALOG_VERSION), str(store.root), CATALOG_STORAGE_VERSION],
        )
        con.execute("USE memory")
        con.execute("DETACH accelmon_catalog")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        con.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)  # a WAL of the replaced file
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


def catalog_storage_version(path: Path) -> int:
    """The storage version number in a DuckDB file's main header ("DUCK" magic at byte 8, then
    the little-endian uint64 version): 64 = v1.0.0 (readable by DuckDB >= 1.0)."""
    with open(path, "rb") as f:
        head = f.read(20)
    if head[8:12] != b"DUCK":
        raise ValueError(f"{path}: not a DuckDB database file")
    return int.from_bytes(head[12:20], "little")
