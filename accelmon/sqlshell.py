"""``accelmon sql``: ad-hoc DuckDB SQL over the store, one-shot or interactive.

Queries run on an in-memory DuckDB connection with the store's views defined, so they never
take the catalog file's lock and never block the daemon.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import decimal
import json
import sys
from typing import Any, TextIO

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


def run_query(store: Store, query: str, fmt: str = "table", out: TextIO | None = None) -> int:
    import duckdb

    out = out or sys.stdout
    con = store.connect()
    try:
        for attempt in range(3):
            try:
                rel = con.sql(query)
                render(rel, fmt, out)
                break
            except duckdb.IOException as e:
                # the query listed a file just before a compaction swapped its partition: re-plan
                if attempt == 2 or "No such file" not in str(e):
                    raise
    except duckdb.Error as e:
        print(f"accelmon: sql: {_err_line(e)}", file=sys.stderr)
        return 1
    finally:
        con.close()
    return 0


def interactive(store: Store) -> int:
    """A small REPL: statements end with ';'. ``.tables`` lists tables and views, ``.quit`` exits."""
    import duckdb

    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history)
    con = store.connect()
    print(f"accelmon sql on {store.root} (DuckDB {duckdb.__version__}); end statements with ';', .quit to exit")
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
            rel = con.sql(q)
            if rel is not None:
                rel.show(max_width=10_000)
        except duckdb.Error as e:
            print(f"error: {_err_line(e)}", file=sys.stderr)
    con.close()
    return 0
