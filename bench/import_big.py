"""Import benchmark: a 50 M-row (≈1.15 GB) utilization trace through ``accelmon import-trace``.

Generates ``timestamp,gpu,util_percent`` rows (1,000 GPUs every 10 s, integer percent, about
23 bytes a row, like the trace in the issue) into a temp dir, imports it with the real CLI in a
subprocess and measures that subprocess' wall time and peak RSS (``wait4`` rusage of that child
alone). Baseline in the same run: the previous importer, which loaded the whole file into one
polars frame (kept below as ``naive_import``), on a smaller file (``--naive-rows``), because at
50 M rows it needs ~10 GB.

Last line: ``rows_per_s=<R> peak_rss_mb=<M> naive_rows_per_s=<R0> naive_peak_rss_mb=<M0>
rows_per_s_at_naive_size=<R1>`` (R1: the streaming importer on the baseline's file, same run;
targets: M < 1000 and R ≥ R0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

T0 = 1_796_400_000  # 2026-12-04T16:00:00Z


def generate(path: Path, rows: int, gpus: int = 1000, chunk: int = 5_000_000) -> int:
    rng = np.random.default_rng(1)
    names = pa.array([f"gpu-{k:04d}" for k in range(gpus)])
    with open(path, "wb") as f:
        f.write(b"timestamp,gpu,util_percent\n")
        for start in range(0, rows, chunk):
            i = np.arange(start, min(rows, start + chunk))
            t = pa.table({"timestamp": T0 + (i // gpus) * 10, "gpu": names.take(pa.array(i % gpus)),
                          "util_percent": rng.integers(0, 101, len(i))})
            pacsv.write_csv(t, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return path.stat().st_size


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MB) of one child process, and its stdout."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    assert p.stdout is not None
    out = p.stdout.read()
    _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{cmd}: exit {p.returncode}")
    return wall, ru.ru_maxrss / 1024, out


def naive_import(csv: Path, data_dir: Path) -> None:
    """The importer before streaming (same parsing, whole file in memory, one append)."""
    import hashlib

    import polars as pl

    from accelmon.store import Store

    hashlib.sha256(csv.read_bytes()).hexdigest()  # it read the whole file to hash it, too
    df = pl.read_csv(csv, infer_schema=False, has_header=True, row_index_name="__row")
    ts = pl.col("timestamp").str.strip_chars().cast(pl.Float64, strict=False)
    df = df.with_columns(ts.alias("__ts_num"), (pl.col("__row") + 2).alias("__line"))
    df = df.with_columns(
        (pl.col("__ts_num") * 1000).round().cast(pl.Int64).alias("__ts_ms"),
        pl.col("util_percent").str.strip_chars().cast(pl.Float64, strict=False).alias("__util"),
        pl.col("gpu").str.strip_chars().alias("__gpu"),
    )
    for cond in (pl.col("__ts_ms").is_null(), pl.col("__gpu") == "", pl.col("__util").is_null(),
                 (pl.col("__util") < 0) | (pl.col("__util") > 100)):
        assert df.filter(cond).height == 0
    out = df.select(
        pl.col("__ts_ms").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").alias("ts"),
        pl.col("__gpu").alias("gpu_uuid"), pl.lit("import").alias("source"),
        pl.col("__util").cast(pl.Float32).alias("util_percent"),
    ).sort("gpu_uuid", "ts")
    Store(data_dir).append("gpu_sample", out)
    print(f"imported {out.height} samples")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000_000)
    ap.add_argument("--naive-rows", type=int, default=5_000_000, help="baseline size (0: skip the baseline)")
    ap.add_argument("--dir", type=Path, help="work here instead of a temp dir (kept)")
    ap.add_argument("--run-naive", nargs=2, type=Path, metavar=("CSV", "DATA_DIR"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run_naive:
        naive_import(*a.run_naive)
        return
    work = a.dir or Path(tempfile.mkdtemp(prefix="accelmon-import-big-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        naive = ""
        if a.naive_rows:
            small = work / "naive.csv"
            size = generate(small, a.naive_rows)
            wall, rss, _ = run_measured([sys.executable, __file__, "--run-naive", str(small), str(work / "naive-data")])
            print(f"naive (previous importer): {a.naive_rows:,} rows, {size / 1e6:.0f} MB in {wall:.1f} s, "
                  f"peak RSS {rss:.0f} MB")
            naive = f" naive_rows_per_s={a.naive_rows / wall:.0f} naive_peak_rss_mb={rss:.0f}"
            wall, rss, _ = run_measured([sys.executable, "-m", "accelmon.cli", "--data-dir", str(work / "small-data"),
                                         "import-trace", str(small)])
            print(f"streaming importer on the same {a.naive_rows:,} rows: {wall:.1f} s, peak RSS {rss:.0f} MB")
            naive += f" rows_per_s_at_naive_size={a.naive_rows / wall:.0f}"
            small.unlink()
        big = work / "trace.csv"
        t = time.perf_counter()
        size = generate(big, a.rows)
        print(f"generated {a.rows:,} rows, {size / 1e9:.2f} GB in {time.perf_counter() - t:.0f} s")
        wall, rss, out = run_measured([sys.executable, "-m", "accelmon.cli", "--data-dir", str(work / "data"),
                                       "import-trace", str(big)])
        print(out.strip())
        assert f"imported {a.rows} samples" in out, out
        print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d}: {a.rows:,} rows in {wall:.1f} s, peak RSS {rss:.0f} MB")
        print(f"rows_per_s={a.rows / wall:.0f} peak_rss_mb={rss:.0f}{naive}")
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
