"""``accelmon import-trace``: GPU utilization traces from CSV into gpu_sample.

Format: header ``timestamp,gpu,util_percent`` and optional ``memory_used_bytes`` (any
column order; other columns are an error so typos do not go unnoticed). ``timestamp`` is
Unix seconds (float) or ISO 8601 (a naive time is UTC). All or nothing: every problem is
reported as ``FILE:LINE: COLUMN: problem`` and nothing of that file is stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from accelmon.errors import UserError
from accelmon.store.writer import Store

REQUIRED = ("timestamp", "gpu", "util_percent")
OPTIONAL = ("memory_used_bytes",)
MAX_PROBLEMS = 50


class TraceError(UserError):
    """Bad rows in a trace file; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0] if problems else "bad trace", exit_code=1)
        self.problems = problems


@dataclass
class ImportResult:
    path: Path
    rows: int
    gpus: int
    first: dt.datetime | None
    last: dt.datetime | None


def _parse_iso(s: str) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(s.strip())
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC)


def read_trace(path: Path, progress: Callable[[int, int], None] | None = None) -> pl.DataFrame:
    """Parse and validate; returns a frame in gpu_sample columns or raises TraceError."""
    name = str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{name}: file not found", exit_code=1) from None
    if size == 0:
        raise TraceError([f"{name}:1: empty file (expected header timestamp,gpu,util_percent)"])
    try:
        df = pl.read_csv(path, infer_schema=False, has_header=True, row_index_name="__row")
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TraceError([f"{name}: cannot parse as CSV: {msg}"]) from None
    cols = [c for c in df.columns if c != "__row"]
    stripped = {c: c.strip() for c in cols}
    df = df.rename(stripped)
    cols = list(stripped.values())
    problems: list[str] = []
    for c in REQUIRED:
        if c not in cols:
            problems.append(f"{name}:1: {c}: missing column (header must have timestamp,gpu,util_percent)")
    for c in cols:
        if c not in REQUIRED + OPTIONAL:
            problems.append(f"{name}:1: {c}: unknown column (allowed: {', '.join(REQUIRED + OPTIONAL)})")
    if problems:
        raise TraceError(problems)
    if progress:
        progress(size // 3, size)

    line = pl.col("__row") + 2
    ts_num = pl.col("timestamp").str.strip_chars().cast(pl.Float64, strict=False)
    df = df.with_columns(ts_num.alias("__ts_num"), line.alias("__line"))
    # ISO timestamps: parse the distinct non-numeric strings in Python (exact ISO 8601 semantics).
    iso_strings = df.filter(pl.col("__ts_num").is_null() & pl.col("timestamp").is_not_null())["timestamp"].unique()
    iso_map = {s: _parse_iso(s) for s in iso_strings.to_list()}
    iso_ms = {s: (int(t.timestamp() * 1000) if t else None) for s, t in iso_map.items()}
    iso_df = pl.DataFrame(
        {"timestamp": list(iso_ms), "__ts_iso": list(iso_ms.values())},
        schema={"timestamp": pl.String, "__ts_iso": pl.Int64},
    )
    df = df.join(iso_df, on="timestamp", how="left")
    df = df.with_columns(
        pl.coalesce((pl.col("__ts_num") * 1000).round().cast(pl.Int64), pl.col("__ts_iso")).alias("__ts_ms"),
        pl.col("util_percent").str.strip_chars().cast(pl.Float64, strict=False).alias("__util"),
        pl.col("gpu").str.strip_chars().alias("__gpu"),
    )
    has_mem = "memory_used_bytes" in cols
    if has_mem:
        df = df.with_columns(
            pl.col("memory_used_bytes").str.strip_chars().cast(pl.Float64, strict=False).alias("__mem")
        )
    if progress:
        progress(2 * size // 3, size)

    checks: list[tuple[str, pl.Expr, str]] = [
        ("timestamp", pl.col("__ts_ms").is_null(), "not Unix seconds or ISO 8601"),
        ("gpu", pl.col("__gpu").is_null() | (pl.col("__gpu") == ""), "empty GPU id"),
        ("util_percent", pl.col("__util").is_null(), "not a number"),
        ("util_percent", pl.col("__util").is_not_nan() & ((pl.col("__util") < 0) | (pl.col("__util") > 100)),
         "out of range 0–100"),
        ("util_percent", pl.col("__util").is_nan(), "not a number"),
    ]
    if has_mem:
        checks += [
            ("memory_used_bytes", pl.col("memory_used_bytes").is_not_null() & pl.col("__mem").is_null(),
             "not a number"),
            ("memory_used_bytes", pl.col("__mem") < 0, "negative"),
        ]
    bad_rows = []
    for col, cond, what in checks:
        bad = df.filter(cond).select("__line", col).sort("__line")
        for ln, val in bad.head(MAX_PROBLEMS).iter_rows():
            shown = "" if val is None else f': "{val}"'
            bad_rows.append((ln, f"{name}:{ln}: {col}: {what}{shown}"))
    if bad_rows:
        bad_rows.sort()
        lines = [m for _, m in bad_rows[:MAX_PROBLEMS]]
        total = sum(
            df.filter(cond).height for _col, cond, _what in checks
        )
        if total > len(lines):
            lines.append(f"{name}: … {total - len(lines)} more problem(s) not shown")
        raise TraceError(lines)
    if df.height == 0:
        raise TraceError([f"{name}:2: no data rows"])
    out = df.select(
        pl.col("__ts_ms").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").alias("ts"),
        pl.col("__gpu").alias("gpu_uuid"),
        pl.lit("import").alias("source"),
        pl.col("__util").cast(pl.Float32).alias("util_percent"),
        *( [pl.col("__mem").round().cast(pl.Int64).alias("fb_used_bytes")] if has_mem else [] ),
    ).sort("gpu_uuid", "ts")
    if progress:
        progress(size, size)
    return out


def _state_file(store: Store) -> Path:
    d = store.root / "state"
    d.mkdir(exist_ok=True)
    return d / "imports.json"


def import_trace(
    store: Store,
    path: Path,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    state_path = _state_file(store)
    state: dict[str, dict[str, object]] = {}
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except json.JSONDecodeError:
            state = {}
    if digest and digest in state and not force:
        prev = state[digest]
        raise UserError(
            f"{path}: already imported on {prev.get('at')} ({prev.get('rows')} rows); use --force to import again",
            exit_code=1,
        )
    df = read_trace(path, progress)
    store.append("gpu_sample", df)
    state[digest] = {"path": str(path), "rows": df.height, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    tmp = state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, state_path)
    return ImportResult(
        path, df.height, df["gpu_uuid"].n_unique(), df["ts"].min(), df["ts"].max()  # type: ignore[arg-type]
    )
