"""Spilling checked batches by (day, GPU bucket) and the duplicate check (pass 2 of an import).

Memory stays bounded because no step holds the whole file: pass 1 writes each checked batch
into small Arrow IPC files keyed by UTC day and a hash bucket of the GPU id; two rows with the
same (GPU, timestamp) always land in the same (day, bucket). Pass 2 takes one day at a time,
reads its buckets in groups of at most ``CHUNK_ROWS`` rows, sorts each group by
(GPU, timestamp, line), and finds duplicates as equal neighbours: identical values are dropped
(counted), different values are an error naming both lines. Each day's groups are written as
row groups of *one* staged Parquet file, so a day is published by a single rename.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from accelmon.importer.parse import Problems
from accelmon.store.schema import GPU_SAMPLE
from accelmon.store.staging import Staging

CHUNK_ROWS = 1_000_000  # rows sorted at once in pass 2 (a few hundred bytes a row at the peak)
BYTES_PER_ROW_GUESS = 20  # shortest realistic row: "1796500020,gpu-0,5\n"
MAX_BUCKETS = 256
DAY_MS = 86_400_000


def bucket_count(size_bytes: int) -> int:
    """Hash buckets per day, from the file size, so that even a file whose rows all fall on one
    day splits into buckets of about 2 × CHUNK_ROWS (more buckets would mean many tiny spill files)."""
    return max(1, min(MAX_BUCKETS, math.ceil(size_bytes / BYTES_PER_ROW_GUESS / (2 * CHUNK_ROWS))))


def day_iso(day_no: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day_no)).isoformat()


@dataclass
class Spill:
    root: Path
    buckets: int
    has_mem: bool
    counts: dict[tuple[int, int], int] = field(default_factory=lambda: defaultdict(int))
    files: dict[tuple[int, int], list[Path]] = field(default_factory=lambda: defaultdict(list))
    gpus: set[str] = field(default_factory=set)
    rows: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    _n: int = 0

    def add(self, df: pl.DataFrame) -> None:
        self._n += 1
        self.rows += df.height
        lo, hi = df["ts_ms"].min(), df["ts_ms"].max()
        assert isinstance(lo, int) and isinstance(hi, int)
        self.first_ms = lo if self.first_ms is None else min(self.first_ms, lo)
        self.last_ms = hi if self.last_ms is None else max(self.last_ms, hi)
        self.gpus.update(df["gpu"].unique().to_list())
        if self.buckets == 1 and lo // DAY_MS == hi // DAY_MS:  # the usual small case: one key
            parts = {(lo // DAY_MS, 0): df}
        else:
            keyed = df.with_columns((pl.col("ts_ms") // DAY_MS).alias("__day"),
                                    (pl.col("gpu").hash(seed=0) % self.buckets).cast(pl.Int64).alias("__bucket"))
            parts = {(int(k[0]), int(k[1])): v  # type: ignore[call-overload]
                     for k, v in keyed.partition_by("__day", "__bucket", as_dict=True, include_key=False).items()}
        for k, part in parts.items():
            p = self.root / f"{k[0]}-{k[1]}-{self._n:06d}.arrow"
            part.write_ipc(p, compression="lz4")
            self.counts[k] += part.height
            self.files[k].append(p)

    def days(self) -> list[int]:
        return sorted({d for d, _b in self.counts})

    def groups(self, day: int) -> list[list[int]]:
        """The day's buckets, in groups of at most CHUNK_ROWS rows (a bucket over it is alone)."""
        out: list[list[int]] = []
        n = 0
        for b in sorted(b for d, b in self.counts if d == day):
            c = self.counts[(day, b)]
            if out and n + c <= CHUNK_ROWS:
                out[-1].append(b)
                n += c
            else:
                out.append([b])
                n = c
        return out


def _to_arrow(df: pl.DataFrame, has_mem: bool) -> pa.Table:
    n = df.height
    cols: dict[str, pa.Array | pa.ChunkedArray] = {}
    for f in GPU_SAMPLE.schema:
        if f.name == "ts":
            cols[f.name] = df["ts_ms"].to_arrow().cast(pa.timestamp("ms")).cast(f.type)
        elif f.name == "gpu_uuid":
            cols[f.name] = df["gpu"].to_arrow().cast(pa.string())
        elif f.name == "source":
            cols[f.name] = pa.repeat(pa.scalar("import", pa.string()), n)
        elif f.name == "util_percent":
            cols[f.name] = df["util"].to_arrow()
        elif f.name == "fb_used_bytes" and has_mem:
            cols[f.name] = df["mem"].to_arrow()
        else:
            cols[f.name] = pa.nulls(n, f.type)
    return pa.Table.from_pydict(cols, schema=GPU_SAMPLE.schema)


def _writer(path: Path) -> pq.ParquetWriter:
    # the same encodings as Store appends (accelmon.store.writer.write_parquet, zstd level 1)
    delta = ["ts", "fb_used_bytes"]
    return pq.ParquetWriter(
        path, GPU_SAMPLE.schema, compression="zstd", compression_level=1,
        use_dictionary=[c for c in GPU_SAMPLE.column_names if c not in delta],
        column_encoding={c: "DELTA_BINARY_PACKED" for c in delta},
        write_statistics=True, data_page_version="2.0",
    )


@dataclass
class Staged:
    rows: int = 0
    duplicates: int = 0


def _iso_ms(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dedupe_and_stage(spill: Spill, stg: Staging, problems: Problems,
                     progress: Callable[[int], None] | None = None) -> Staged:
    """Pass 2: duplicate check per group; one staged Parquet file per day (unless problems)."""
    res = Staged()
    vals = ["util", "mem"] if spill.has_mem else ["util"]
    done = 0
    for day in spill.days():
        writer: pq.ParquetWriter | None = None
        path: Path | None = None
        name = ""
        day_rows = 0
        try:
            for group in spill.groups(day):
                df = pl.concat([pl.read_ipc(p) for b in group for p in spill.files[(day, b)]])
                # integer GPU codes sort ~5x faster than strings; a stable sort keeps line order in ties
                df = df.with_columns(pl.col("gpu").cast(pl.Categorical).to_physical().alias("__g"))
                df = df.sort("__g", "ts_ms", maintain_order=True)
                same = (pl.col("__g") == pl.col("__g").shift(1)) & (pl.col("ts_ms") == pl.col("ts_ms").shift(1))
                equal = pl.all_horizontal(pl.col(v).eq_missing(pl.col(v).shift(1)) for v in vals)
                df = df.with_columns(same.fill_null(False).alias("__dup"), equal.alias("__eq"))
                conflicts = df.filter(pl.col("__dup") & ~pl.col("__eq"))
                if conflicts.height:
                    prev = df.with_columns(*(pl.col(c).shift(1).alias(f"__prev_{c}") for c in ["line", *vals]))
                    for r in prev.filter(pl.col("__dup") & ~pl.col("__eq")).head(50).iter_rows(named=True):
                        diff = ", ".join(f"{_col(v)} {_fmt(r[f'__prev_{v}'])} vs {_fmt(r[v])}" for v in vals
                                         if r[v] != r[f"__prev_{v}"])
                        problems.add(r["line"], f"{problems.name}:{r['line']}: timestamp: duplicate of line "
                                     f"{r['__prev_line']} for gpu \"{r['gpu']}\" at {_iso_ms(r['ts_ms'])} with "
                                     f"different values ({diff})")
                    problems.total += max(0, conflicts.height - 50)
                ndup = int(df["__dup"].sum())
                res.duplicates += ndup
                done += df.height
                if progress:
                    progress(done)
                if problems.total:
                    continue  # keep checking the rest, write nothing
                out = df.filter(~pl.col("__dup")) if ndup else df
                if writer is None:
                    path, name = stg.new_path("gpu_sample", day_iso(day))
                    writer = _writer(path)
                writer.write_table(_to_arrow(out, spill.has_mem), row_group_size=1 << 20)
                day_rows += out.height
                del df, out
        finally:
            if writer is not None:
                writer.close()
        if writer is not None and path is not None and not problems.total:
            stg.add("gpu_sample", day_iso(day), path, name, day_rows)
            res.rows += day_rows
    return res


def _col(v: str) -> str:
    return {"util": "util_percent", "mem": "memory_used_bytes"}[v]


def _fmt(x: object) -> str:
    if x is None:
        return "empty"
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)
