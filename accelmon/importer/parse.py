"""Reading and checking a trace CSV in bounded batches (pass 1 of an import).

The header is read with Python's ``csv`` module; the body is streamed by pyarrow's CSV reader
(``open_csv``) as strings, one block (``BLOCK_BYTES``) at a time, and every batch is checked
with polars expressions. Every problem is one line ``FILE:LINE: COLUMN: problem: "value"``.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from accelmon.errors import UserError

REQUIRED = ("timestamp", "gpu", "util_percent")
OPTIONAL = ("memory_used_bytes",)
MAX_PROBLEMS = 50
BLOCK_BYTES = 8 << 20

# Plausible time range of a GPU utilization trace. 2000-01-01 predates NVML (2011) and CUDA
# (2007); 2100 is far enough ahead for any clock. A Unix time in *milliseconds* (1796500020000)
# or a typo like 1e300 falls outside and is reported, instead of overflowing a date later.
TS_MIN_S = 946_684_800.0  # 2000-01-01T00:00:00Z
TS_MAX_S = 4_102_444_800.0  # 2100-01-01T00:00:00Z
TS_RANGE_TEXT = "2000-01-01 .. 2100-01-01"
# No GPU has 1 PiB of memory (the largest boards have a few hundred GiB); also keeps int64 exact.
MEM_MAX_BYTES = float(1 << 50)


class TraceError(UserError):
    """Bad rows in a trace file; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0] if problems else "bad trace", exit_code=1)
        self.problems = problems


@dataclass
class Problems:
    name: str
    shown: list[tuple[int, str]] = field(default_factory=list)
    total: int = 0

    def add(self, line: int, msg: str) -> None:
        self.total += 1
        if len(self.shown) < MAX_PROBLEMS:
            self.shown.append((line, msg))

    def lines(self) -> list[str]:
        out = [m for _, m in sorted(self.shown, key=lambda x: x[0])]
        if self.total > len(out):
            out.append(f"{self.name}: … {self.total - len(out)} more problem(s) not shown")
        return out


@dataclass
class Header:
    raw: list[str]  # as in the file (used to name pyarrow's columns)
    names: list[str]  # stripped

    @property
    def has_mem(self) -> bool:
        return "memory_used_bytes" in self.names


def check_path(path: Path) -> int:
    """The file's size; a one-line UserError for a missing file, a directory, no permission."""
    name = str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"{name}: file not found", exit_code=1) from None
    except OSError as e:
        raise UserError(f"{name}: cannot read: {e.strerror}", exit_code=1) from None
    if path.is_dir():
        raise UserError(f"{name}: is a directory, not a CSV file", exit_code=1)
    if not path.is_file():
        raise UserError(f"{name}: not a regular file", exit_code=1)
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise UserError(f"{name}: cannot read: {e.strerror}", exit_code=1) from None
    return st.st_size


def read_header(path: Path) -> Header:
    name = str(path)
    with open(path, "rb") as f:
        first = f.readline(1 << 16)
    if not first.strip():
        raise TraceError([f"{name}:1: empty file or header (expected header timestamp,gpu,util_percent)"])
    try:
        text = first.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise TraceError([f"{name}:1: header is not UTF-8 text"]) from None
    raw = next(csv.reader([text]))
    names = [c.strip() for c in raw]
    problems = [f"{name}:1: {c}: missing column (header must have timestamp,gpu,util_percent)"
                for c in REQUIRED if c not in names]
    problems += [f"{name}:1: {c}: unknown column (allowed: {', '.join(REQUIRED + OPTIONAL)})"
                 for c in names if c not in REQUIRED + OPTIONAL]
    problems += [f"{name}:1: {c}: column given twice" for c in sorted({c for c in names if names.count(c) > 1})]
    if problems:
        raise TraceError(problems)
    return Header(raw, names)


def _parse_iso(s: str) -> float | None:
    try:
        t = dt.datetime.fromisoformat(s.strip())
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def _to_float(s: pl.Series) -> pl.Series:
    """Numbers, tolerating surrounding blanks; null where not a number. Strips only when needed."""
    num = s.cast(pl.Float64, strict=False)
    if num.null_count() == 0:
        return num
    return num.fill_null(s.str.strip_chars().cast(pl.Float64, strict=False))


def _ts_seconds(ts: pl.Series) -> pl.Series:
    """Unix seconds from ``timestamp``: a number, or ISO 8601 (naive = UTC) parsed in Python
    for exact semantics - once per distinct string of the batch."""
    num = _to_float(ts)
    todo = num.is_null() & (ts.str.strip_chars() != "")
    if not todo.any():
        return num
    iso = {s: _parse_iso(s) for s in ts.filter(todo).unique().to_list()}
    parsed = ts.replace_strict(iso, default=None, return_dtype=pl.Float64)
    return num.fill_null(parsed)


def _checks(has_mem: bool) -> list[tuple[str, pl.Expr, Callable[[str], str]]]:
    t, u = pl.col("__ts_s"), pl.col("__util")
    checks: list[tuple[str, pl.Expr, Callable[[str], str]]] = [
        ("timestamp", t.is_null(), lambda v: "not Unix seconds or ISO 8601"),
        ("timestamp", t.is_not_null() & (t.is_nan() | (t < TS_MIN_S) | (t >= TS_MAX_S)), _ts_range_msg),
        ("gpu", pl.col("__gpu") == "", lambda v: "empty GPU id"),
        ("util_percent", u.is_null() | u.is_nan(), lambda v: "not a number"),
        ("util_percent", u.is_not_nan() & ((u < 0) | (u > 100)), lambda v: "out of range 0–100"),
    ]
    if has_mem:
        m = pl.col("__mem")
        checks += [
            ("memory_used_bytes", (pl.col("memory_used_bytes").str.strip_chars() != "") & (m.is_null() | m.is_nan()),
             lambda v: "not a number"),
            ("memory_used_bytes", m < 0, lambda v: "negative"),
            ("memory_used_bytes", m > MEM_MAX_BYTES, lambda v: "implausibly large (over 1 PiB)"),
        ]
    return checks


def _ts_range_msg(v: str) -> str:
    msg = f"outside the plausible range {TS_RANGE_TEXT}"
    try:
        x = float(v)
    except ValueError:
        return msg
    if math.isfinite(x) and TS_MIN_S <= x / 1000 < TS_MAX_S:
        msg += " (milliseconds instead of seconds?)"
    return msg


class Reader:
    """Streams a trace as checked batches: ``ts_ms`` (int64), ``gpu``, ``util`` (float32),
    ``mem`` (int64, nullable; present with the column), ``line`` (the file's line number)."""

    def __init__(self, path: Path, header: Header, problems: Problems) -> None:
        self.path = path
        self.header = header
        self.problems = problems
        self.blank_lines = 0
        self._skipped: list[int] = []
        self._next = 2  # line number of the next data row
        self._checks = _checks(header.has_mem)
        self._file: pa.NativeFile | None = None

    def bytes_read(self) -> int:
        return self._file.tell() if self._file is not None and not self._file.closed else 0

    def _bad_row(self, row: pacsv.InvalidRow) -> str:
        ln = row.number if row.number is not None else -1
        self.problems.add(ln, f"{self.path}:{ln}: expected {row.expected_columns} fields, got {row.actual_columns}")
        self._skipped.append(ln)
        return "skip"

    def batches(self) -> Iterator[pl.DataFrame]:
        raw = self.header.raw
        self._file = pa.OSFile(str(self.path))
        try:
            reader = pacsv.open_csv(
                self._file,
                read_options=pacsv.ReadOptions(column_names=raw, skip_rows=1, block_size=BLOCK_BYTES,
                                               use_threads=False),  # serial: invalid rows get line numbers
                parse_options=pacsv.ParseOptions(invalid_row_handler=self._bad_row, ignore_empty_lines=False,
                                                 newlines_in_values=False),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in raw},
                                                     strings_can_be_null=False, quoted_strings_can_be_null=False),
            )
            for rb in reader:
                yield from self._check(rb)
        except pa.ArrowInvalid as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TraceError([f"{self.path}: cannot parse as CSV: {msg}"]) from None
        finally:
            self._file.close()

    def _lines(self, n: int) -> np.ndarray:
        lines = np.arange(self._next, self._next + n, dtype=np.int64)
        for s in sorted(self._skipped):  # rows pyarrow skipped shift later line numbers
            lines[lines >= s] += 1
        self._next = int(lines[-1]) + 1 if n else self._next
        return lines

    def _check(self, rb: pa.RecordBatch) -> Iterator[pl.DataFrame]:
        if rb.num_rows == 0:
            return
        df = pl.from_arrow(rb)
        assert isinstance(df, pl.DataFrame)
        df = df.rename(dict(zip(self.header.raw, self.header.names, strict=True)))
        df = df.with_columns(pl.Series("line", self._lines(rb.num_rows)))
        ts = _ts_seconds(df.get_column("timestamp"))
        if ts.null_count():  # blank lines (every field empty) are ignored; only they can be all ""
            blank = df.select(pl.all_horizontal(pl.col(c) == "" for c in self.header.names)).to_series()
            if blank.any():
                self.blank_lines += int(blank.sum())
                df, ts = df.filter(~blank), ts.filter(~blank)
                if df.height == 0:
                    return
        df = df.with_columns(ts.alias("__ts_s"), pl.col("gpu").str.strip_chars().alias("__gpu"), _to_float(df.get_column("util_percent")).alias("__util"),
                             *([_to_float(df.get_column("memory_used_bytes")).alias("__mem")]
                               if self.header.has_mem else []))
        bad_any = pl.any_horizontal(cond for _c, cond, _m in self._checks)
        bad = df.filter(bad_any.fill_null(False))
        if bad.height:
            for col, cond, what in self._checks:
                for ln, val in bad.filter(cond.fill_null(False)).select("line", col).iter_rows():
                    shown = f': "{val}"' if val else ""
                    self.problems.add(ln, f"{self.path}:{ln}: {col}: {what(val)}{shown}")
        if self.problems.total:
            return  # the import fails: keep reading only to report problems
        yield df.select(
            (pl.col("__ts_s") * 1000).round().cast(pl.Int64).alias("ts_ms"),
            pl.col("__gpu").alias("gpu"),
            pl.col("__util").cast(pl.Float32).alias("util"),
            *([pl.col("__mem").round().cast(pl.Int64).alias("mem")] if self.header.has_mem else []),
            pl.col("line"),
        )
