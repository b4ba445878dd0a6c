"""Ingest benchmark: 1,000 GPUs × 24 h at 10 s through the real store path.

Generates realistic GPU telemetry (a mix of idle-but-allocated, bursty inference and
training GPUs; noisy utilization at NVML's integer resolution; busy/idle, PCIe and energy
counters growing at varying rates; framebuffer that changes when jobs start and stop;
poll jitter), appends it hour by hour with ``Store.append`` (durable: fsync + rename),
compacts, and measures bytes on disk per value. Baseline in the same run: row-by-row
DuckDB ``INSERT`` of 100 k rows, extrapolated.

A *value* is one measured field of one GPU at one time; gpu_sample has 10 value columns
(util, mem util, busy, idle, fb used, fb total, PCIe tx, PCIe rx, power, energy).

Last line: ``values_per_s=<N> bytes_per_value=<B> naive_values_per_s=<M>``
(targets: N ≥ 5,000,000, B ≤ 1.5).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from accelmon.store import Store
from accelmon.store.schema import GPU_SAMPLE, GPU_SAMPLE_VALUE_COLUMNS

STEP_S = 10.0
SAMPLE_MS = 1000.0 / 6.0  # NVML utilization sample period on recent GPUs


def generate_hour(rng: np.random.Generator, state: dict[str, np.ndarray], n_gpus: int, hour: int,
                  t0_ms: int) -> pa.Table:
    steps = int(3600 / STEP_S)
    kind = state["kind"]  # 0 idle-allocated, 1 inference, 2 training
    # --- utilization: per-GPU regime + noise, integer percent like NVML
    base = np.where(kind == 2, 92.0, np.where(kind == 1, 25.0, 0.0))[:, None]
    noise = rng.normal(0, 1, (n_gpus, steps))
    util = base + noise * np.where(kind == 2, 5.0, np.where(kind == 1, 18.0, 0.0))[:, None]
    # inference: bursts (on/off with persistence), idle: rare short spikes
    on = rng.random((n_gpus, steps)) < np.where(kind == 1, 0.45, np.where(kind == 0, 0.02, 1.0))[:, None]
    util = np.where(on, util, 0.0)
    util = np.where((kind == 0)[:, None] & on, rng.uniform(1, 30, (n_gpus, steps)), util)
    # training: data-loader dips
    dips = (kind == 2)[:, None] & (rng.random((n_gpus, steps)) < 0.03)
    util = np.where(dips, rng.uniform(0, 40, (n_gpus, steps)), util)
    util = np.clip(np.rint(util), 0, 100)
    mem_util = np.clip(np.rint(util * rng.uniform(0.3, 0.7, (n_gpus, 1)) + rng.normal(0, 2, (n_gpus, steps))),
                       0, 100) * (util > 0)
    # --- busy/idle ms: driver samples of 1/6 s; busy share ~ util
    n_samples = np.full((n_gpus, steps), 60)
    busy_samples = rng.binomial(n_samples, np.clip(util / 100.0 * 1.05, 0, 1))
    busy_ms = np.rint(busy_samples * SAMPLE_MS).astype(np.int64)
    idle_ms = np.rint((n_samples - busy_samples) * SAMPLE_MS).astype(np.int64)
    # --- PCIe bytes per step: lognormal around a rate that follows utilization
    rate = np.where(kind == 2, 3e9, np.where(kind == 1, 2e8, 2e4))[:, None] * (0.05 + util / 100.0)
    tx = np.rint(rate * STEP_S * rng.lognormal(0, 0.35, (n_gpus, steps))).astype(np.int64)
    rx = np.rint(rate * 0.6 * STEP_S * rng.lognormal(0, 0.35, (n_gpus, steps))).astype(np.int64)
    # --- power (mW): idle floor + util-proportional + noise; energy integrates it
    idle_w, max_w = state["idle_w"][:, None], state["max_w"][:, None]
    power_mw = np.rint((idle_w + (max_w - idle_w) * util / 100.0 + rng.normal(0, 1.5, (n_gpus, steps))) * 1000)
    power_mw = power_mw.astype(np.int32)
    energy_step = (power_mw.astype(np.int64) * int(STEP_S))  # mW × s = mJ
    # --- framebuffer: held per job, changes when a job starts/stops (rare)
    fb_total = state["fb_total"][:, None] * np.ones((1, steps), dtype=np.int64)
    change = rng.random((n_gpus, steps)) < 0.002
    new_fb = (rng.uniform(0.1, 0.95, (n_gpus, steps)) * fb_total).astype(np.int64) & ~((1 << 20) - 1)
    fb = np.empty((n_gpus, steps), dtype=np.int64)
    cur = state["fb_used"].copy()
    for s in range(steps):  # 360 iterations, vectorised over GPUs
        cur = np.where(change[:, s], new_fb[:, s], cur)
        fb[:, s] = cur
    state["fb_used"] = cur
    # counters
    busy_c = state["busy"][:, None] + np.cumsum(busy_ms, axis=1)
    idle_c = state["idle"][:, None] + np.cumsum(idle_ms, axis=1)
    tx_c = state["tx"][:, None] + np.cumsum(tx, axis=1)
    rx_c = state["rx"][:, None] + np.cumsum(rx, axis=1)
    en_c = state["energy"][:, None] + np.cumsum(energy_step, axis=1)
    state["busy"], state["idle"], state["tx"], state["rx"], state["energy"] = (
        busy_c[:, -1], idle_c[:, -1], tx_c[:, -1], rx_c[:, -1], en_c[:, -1])
    # timestamps: 10 s grid + per-poll jitter (ms)
    grid = t0_ms + (hour * steps + np.arange(steps)) * int(STEP_S * 1000)
    ts = grid[None, :] + rng.integers(0, 40, (n_gpus, steps)) + state["phase"][:, None]

    def flat(a: np.ndarray) -> np.ndarray:  # time-major order, as a poller appends
        return a.T.reshape(-1)

    return pa.table({
        "ts": pa.array(flat(ts), pa.timestamp("ms", tz="UTC")),
        "gpu_uuid": pa.DictionaryArray.from_arrays(
            np.tile(np.arange(n_gpus, dtype=np.int32), steps), pa.array(state["uuids"])).cast(pa.string()),
        "source": pa.array(["agent"] * (n_gpus * steps)),
        "util_percent": pa.array(flat(util).astype(np.float32)),
        "mem_util_percent": pa.array(flat(mem_util).astype(np.float32)),
        "busy_ms_total": pa.array(flat(busy_c)),
        "idle_ms_total": pa.array(flat(idle_c)),
        "fb_used_bytes": pa.array(flat(fb)),
        "fb_total_bytes": pa.array(flat(fb_total)),
        "pcie_tx_bytes_total": pa.array(flat(tx_c)),
        "pcie_rx_bytes_total": pa.array(flat(rx_c)),
        "power_milliwatts": pa.array(flat(power_mw)),
        "energy_millijoules_total": pa.array(flat(en_c)),
    })


def init_state(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    kind = rng.choice(3, size=n, p=[0.55, 0.25, 0.20])
    big = rng.random(n) < 0.5
    return {
        "kind": kind,
        "uuids": np.array([f"GPU-{rng.bytes(16).hex()[:8]}-{i:04x}-4a1b-9c3d-{rng.bytes(6).hex()}" for i in range(n)]),
        "fb_total": np.where(big, 85899345920, 42949672960).astype(np.int64),
        "fb_used": np.where(kind == 0, (rng.uniform(0.2, 0.9, n) * 42949672960).astype(np.int64) & ~((1 << 20) - 1),
                            (rng.uniform(0.3, 0.95, n) * 42949672960).astype(np.int64) & ~((1 << 20) - 1)),
        "idle_w": np.where(big, 70.0, 52.0) + rng.normal(0, 3, n),
        "max_w": np.where(big, 650.0, 390.0),
        "busy": rng.integers(0, 10**9, n), "idle": rng.integers(0, 10**10, n),
        "tx": rng.integers(0, 10**13, n), "rx": rng.integers(0, 10**13, n),
        "energy": rng.integers(0, 10**11, n),
        "phase": rng.integers(0, 10_000, n),
    }


def naive_baseline(rows: int, tmp: Path) -> float:
    import duckdb

    con = duckdb.connect(str(tmp / "naive.duckdb"))
    con.execute("CREATE TABLE gpu_sample (ts TIMESTAMPTZ, gpu_uuid VARCHAR, source VARCHAR, util_percent FLOAT, "
                "mem_util_percent FLOAT, busy_ms_total BIGINT, idle_ms_total BIGINT, fb_used_bytes BIGINT, "
                "fb_total_bytes BIGINT, pcie_tx_bytes_total BIGINT, pcie_rx_bytes_total BIGINT, "
                "power_milliwatts INTEGER, energy_millijoules_total BIGINT)")
    rng = np.random.default_rng(7)
    t = generate_hour(rng, init_state(rng, 1000), 1000, 0, 1_700_000_000_000).slice(0, rows).to_pylist()
    sql = "INSERT INTO gpu_sample VALUES (" + ",".join("?" * 13) + ")"
    start = time.perf_counter()
    for r in t:
        con.execute(sql, list(r.values()))
    el = time.perf_counter() - start
    con.close()
    return rows * len(GPU_SAMPLE_VALUE_COLUMNS) / el


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--naive-rows", type=int, default=100_000)
    ap.add_argument("--keep", type=Path, help="keep the store in this directory")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="accelmon-bench-ingest-"))
    data = a.keep or tmp / "data"
    try:
        rng = np.random.default_rng(42)
        st = init_state(rng, a.gpus)
        t0_ms = 1_780_000_000_000 - 1_780_000_000_000 % 86_400_000  # midnight UTC: one day partition
        hours = [generate_hour(rng, st, a.gpus, h, t0_ms) for h in range(a.hours)]
        rows = sum(h.num_rows for h in hours)
        values = rows * len(GPU_SAMPLE_VALUE_COLUMNS)
        print(f"generated {rows:,} rows ({values:,} values) of {a.gpus} GPUs × {a.hours} h at {STEP_S:g} s")
        store = Store(data)
        start = time.perf_counter()
        for h in hours:
            store.append("gpu_sample", h)
        t_append = time.perf_counter() - start
        raw_bytes = store.disk_bytes("gpu_sample")
        c0 = time.perf_counter()
        res = store.compact(["gpu_sample"])
        t_compact = time.perf_counter() - c0
        total = time.perf_counter() - start
        disk = store.disk_bytes("gpu_sample")
        con = store.connect()
        n = con.execute("SELECT count(*) FROM gpu_sample").fetchone()[0]
        assert n == rows, (n, rows)
        # per-column size after compaction
        import pyarrow.parquet as pq

        md = pq.ParquetFile(store.files("gpu_sample", res[0].partition)[0]).metadata
        col_bytes: dict[str, int] = {}
        for rg in range(md.num_row_groups):
            for c in range(md.num_columns):
                cc = md.row_group(rg).column(c)
                col_bytes[cc.path_in_schema] = col_bytes.get(cc.path_in_schema, 0) + cc.total_compressed_size
        for k, v in col_bytes.items():
            print(f"  {k:26s} {v / rows:6.3f} bytes/row")
        print(f"append {t_append:.2f} s ({len(hours)} appends, {raw_bytes / values:.2f} bytes/value before "
              f"compaction), compaction {t_compact:.2f} s")
        naive = naive_baseline(a.naive_rows, tmp)
        print(f"values_per_s={values / total:.0f} bytes_per_value={disk / values:.3f} "
              f"naive_values_per_s={naive:.0f}")
        _ = GPU_SAMPLE
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
