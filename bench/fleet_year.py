"""A year of hourly rollups for a 10,000-GPU fleet, and the year-window report figures from them.

Generates ``gpu_rollup_hour`` for GPUS × DAYS × 24 hours (10,000 × 365 ≈ 88 M rows) directly as
Parquet (numpy/pyarrow, one file per day partition, written with the store's encodings) in a temp
store (this process's shard, as the rollup job writes it), marks the days rolled up in
``state/rollup.<shard>.json``, then runs the per-GPU figures of the
year window exactly as the report does (``analytics.longwindow.figures``, the rollup path), timed,
with the peak RSS of the process.

    python bench/fleet_year.py [--gpus 10000] [--days 365] [--keep DIR]

Last line: ``year_report_s=<S> rss_mb=<M>`` (target S < 30, M < 4,000; docs/store.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from accelmon.analytics import longwindow, rollup
from accelmon.analytics.window import Window
from accelmon.store.schema import table
from accelmon.store.writer import Store, write_parquet

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def day_table(gpus: list[str], day: int, rng: np.random.Generator, base_util: np.ndarray) -> pa.Table:
    g = len(gpus)
    n = g * 24
    hour0 = int((T0 + dt.timedelta(days=day)).timestamp() * 1000)
    hours = hour0 + np.tile(np.arange(24, dtype=np.int64) * 3_600_000, g)
    cov = np.where(rng.random(n) < 0.02, rng.uniform(0, 3600, n), 3600.0)
    util = np.clip(np.repeat(base_util, 24) + rng.normal(0, 8, n), 0, 100)
    busy = cov * util / 100
    idle_full = np.where(util < 1, cov, 0.0)
    energy = cov * (60 + 3 * util)
    samples = np.rint(cov / 10).astype(np.int32)
    ts = pa.array(hours, pa.int64()).cast(pa.timestamp("ms", "UTC"))
    gpu_col = pa.DictionaryArray.from_arrays(pa.array(np.repeat(np.arange(g, dtype=np.int32), 24)), pa.array(gpus))
    src = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array(["agent"]))
    vm = pa.DictionaryArray.from_arrays(gpu_col.indices, pa.array([f"bios-{u[4:]}" for u in gpus]))
    return pa.table({
        "hour_start": ts, "gpu_uuid": gpu_col, "source": src, "vm_bios_uuid": vm,
        "busy_s": busy, "idle_s": cov - busy, "covered_s": cov, "samples": samples,
        "fb_used_max_bytes": (rng.integers(1, 80, n) << 30).astype(np.int64),
        "fb_total_bytes": np.full(n, 80 << 30, np.int64), "energy_j": energy,
        "idle_full_s": idle_full, "idle_full_energy_j": np.where(util < 1, energy, 0.0),
        "alloc_idle_s": (cov - busy) * 0.5, "gap_s": np.zeros(n), "intervals": samples,
        "held_intervals": np.zeros(n, np.int32), "interval_s": cov,
        "first_ts": ts, "last_ts": pa.array(hours + 3_590_000, pa.int64()).cast(pa.timestamp("ms", "UTC")),
    })


def generate(store: Store, n_gpus: int, days: int) -> int:
    t = table("gpu_rollup_hour")
    rng = np.random.default_rng(17)
    gpus = [f"GPU-{i:08x}-0000-0000-0000-000000000000" for i in range(n_gpus)]
    base = np.where(rng.random(n_gpus) < 0.4, rng.uniform(0, 10, n_gpus), rng.uniform(10, 90, n_gpus))
    rows = 0
    state = {}
    # this process's shard, as the daemon's rollup job writes it (tables/<t>/shard=<s>/date=<day>), with
    # every table's epoch file: gpu_sample has a shard, so the report asks state/rollup.<shard>.json
    store.prepare_writer()
    for d in range(days):
        day = (T0 + dt.timedelta(days=d)).date().isoformat()
        data = day_table(gpus, d, rng, base)
        gen = store.gen_root(t.name) / f"date={day}" / "g000001"
        gen.mkdir(parents=True, exist_ok=True)
        with open(gen / "compact-bench.parquet", "wb") as f:
            write_parquet(t, data, f, level=1)
        link = store.link_path(t.name, day)
        link.parent.mkdir(parents=True, exist_ok=True)
        store._swap_link(link, gen)
        state[day] = {"through": (T0 + dt.timedelta(days=d + 1)).isoformat(), "fingerprint": "", "at": ""}
        rows += data.num_rows
    rollup.save_state(store, {"days": state})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--keep", type=Path, help="generate into this dir and keep it (a dir generated before is reused)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="accelmon-fleet-year-"))
    try:
        store = Store(root)
        t0 = time.monotonic()
        reuse = args.keep is not None and bool(rollup.load_state(store)["days"])
        rows = (args.gpus * args.days * 24) if reuse else generate(store, args.gpus, args.days)  # --keep: reuse
        gen_s = time.monotonic() - t0
        size = sum(f.stat().st_size for f in store.files("gpu_rollup_hour"))
        print(f"generated {rows:,} rollup rows ({args.gpus:,} GPUs x {args.days} days x 24 h) in {gen_s:.1f}s, "
              f"{size / 1e6:,.0f} MB", flush=True)
        w = Window(T0, T0 + dt.timedelta(days=args.days), "year")
        t0 = time.monotonic()
        con = store.connect()
        wf = longwindow.figures(store, con, w, rollup_after=2 * 86400.0)
        heat = wf.heat(wf.metrics.select("gpu", "source"))
        year_s = time.monotonic() - t0
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        m = wf.metrics
        print(f"GPUs {m.height:,}, rollup hours {wf.stats['rollup_hours']:,}, fleet mean "
              f"{float(m['mean_util_percent'].mean()):.1f} %, idle {float(m['idle_hours'].sum()):,.0f} GPU-hours, "
              f"heatmap cells {heat.height:,}")
        print(f"year_report_s={year_s:.2f} rss_mb={rss_mb:.0f}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
