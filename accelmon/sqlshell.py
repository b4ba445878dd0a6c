"""``accelmon sql``: ad-hoc DuckDB SQL over the store, one-shot or interactive - read-only.

Queries run on an in-memory DuckDB connection with the store's views defined, so they never
take the catalog file's lock and never block the daemon. The connection cannot change the
store or read anything else, by DuckDB's own means (docs/store.md, "accelmon sql is read-only"):

* ``enable_external_access = false`` with ``allowed_directories`` = the store's ``tables/`` and
  ``.gen/`` only: no other file (``read_text('/etc/passwd')``), no ``ATTACH`` of the catalog or
  any database file, no extension install/load, no network;
* ``lock_configuration = true``: no ``SET`` can undo that;
* DuckDB's parser (``duckdb.extract_statements``) admits only queries - ``SELECT`` (with
  ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``, ``FROM …``, ``VALUES``) and ``EXPLAIN`` of one - because
  an allowed directory is writable for DuckDB: ``COPY … TO``, ``EXPORT``, ``CREATE``, ``INSERT``,
  ``ATTACH``, ``SET``, ``CALL``, ``PRAGMA`` are refused before they run.

Nothing is written to the data dir, so it works on a read-only one.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import decimal
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, TextIO

import duckdb

from accelmon.store.writer import Store


def _err_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


def _jsonable(v: Any) -> Any:
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def render(rel: Any, fmt: str, out: TextIO) -> None:
    if rel is None:  # a statement without result
        return
    if fmt == "table":
        out.flush()
        rel.show(max_width=10_000, max_rows=1_000_000)
        return
    cols = rel.columns
    rows = rel.fetchall()
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(cols)
        w.writerows(rows)
    else:
        json.dump([dict(zip(cols, r, strict=True)) for r in rows], out, default=_jsonable, indent=1)
        out.write("\n")


class ReadOnlyViolation(Exception):
    """A statement that is not a query; the message is one line."""


_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+|\([^)]*\)\s*)?", re.IGNORECASE)


def check_query(sql: str) -> None:
    """Raise ReadOnlyViolation unless every statement is a query (DuckDB's parser decides)."""
    for st in duckdb.extract_statements(sql):
        kind = st.type.name
        if kind == "EXPLAIN":
            inner = duckdb.extract_statements(_EXPLAIN.sub("", st.query, count=1))
            if len(inner) == 1 and inner[0].type.name == "SELECT":
                continue
            kind = "EXPLAIN of " + (inner[0].type.name if inner else "nothing")
        if kind != "SELECT":
            raise ReadOnlyViolation(f"{kind} refused: accelmon sql is read-only (queries only: SELECT, "
                                    "DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)")


@contextlib.contextmanager
def readonly_connection(store: Store) -> Iterator[Any]:
    """An in-memory connection with the store's views that can read the store and nothing else."""
    scratch = tempfile.mkdtemp(prefix="accelmon-sql-")  # spill space for big sorts, private, removed
    con = duckdb.connect(":memory:")
    try:
        store.define_views(con)
        dirs = [str(store.root / "tables") + "/", str(store.root / ".gen") + "/"]
        con.execute(f"SET temp_directory = '{scratch}'")
        con.execute("SET allowed_directories = [" + ", ".join("'" + d.replace("'", "''") + "'" for d in dirs) + "]")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)


def run_query(store: Store, query: str, fmt: str = "table", out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        check_query(query)
        with readonly_connection(store) as con:
            for attempt in range(3):
                try:
                    rel = con.sql(query)
                    render(rel, fmt, out)
                    break
                except duckdb.IOException as e:
                    # the query listed a file just before a compaction swapped its partition: re-plan
                    if attempt == 2 or "No such file" not in str(e):
                        raise
    except (duckdb.Error, ReadOnlyViolation) as e:
        print(f"accelmon: sql: {_err_line(e)}", file=sys.stderr)
        return 1
    return 0


def interactive(store: Store) -> int:
    """A small REPL: statements end with ';'. ``.tables`` lists tables and views, ``.quit`` exits."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  # lazy: optional (absent on some Python builds); line editing for the interactive shell only
    with readonly_connection(store) as con:
        print(f"accelmon sql on {store.root} (DuckDB {duckdb.__version__}, read-only); end statements with ';', "
              ".quit to exit")
        buf: list[str] = []
        while True:
            try:
                line = input("accelmon> " if not buf else "      ...> ")
            except EOFError:
                print()
                break
            except KeyboardInterrupt:
                print()
                buf = []
                continue
            s = line.strip()
            if not buf and s in (".quit", ".exit", "\\q"):
                break
            if not buf and s == ".tables":
                s = "SELECT table_name, table_type FROM information_schema.tables ORDER BY 1;"
            buf.append(s)
            if not s.endswith(";"):
                continue
            q = "\n".join(buf)
            buf = []
            try:
                check_query(q)
                rel = con.sql(q)
                if rel is not None:
                    rel.show(max_width=10_000)
            except (duckdb.Error, ReadOnlyViolation) as e:
                print(f"error: {_err_line(e)}", file=sys.stderr)
    return 0
