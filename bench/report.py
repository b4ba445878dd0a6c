"""Benchmark: the full report over 1,000 GPUs x 7 days at 10 s (about 60 M gpu_sample rows).

    python bench/report.py [--gpus 1000] [--days 7] [--step 10] [--keep DIR]

1. Generates a realistic estate (idle, bursty and busy GPUs; jittered steps; scrape gaps;
   busy/idle/energy counters with occasional resets) with numpy and writes it through the
   real ``Store.append`` path, one sorted file per (day, GPU chunk) as compaction leaves it.
2. Runs the full report (``accelmon.report.cli.run_report``) and times it; RSS is the peak
   resident set of this process during the report (the generator's memory is freed first and
   the peak counter is reset where the kernel allows it, else measured as the report's delta).
3. Computes the same underutilization answer naively (a plain Python loop over rows) for a
   1 % subset of GPUs, extrapolates the time to all GPUs, and checks both agree.

Last line: ``report_s=<S> rss_mb=<M> speedup_vs_naive=<X>``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelmon.store.writer import Store  # noqa: E402

T0 = datetime(2025, 3, 3, tzinfo=UTC)
FB_TOTAL = 80 * 2**30


def gpu_ids(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        h = rng.integers(0, 16, 32)
        s = "".join("0123456789abcdef"[x] for x in h)
        out.append(f"GPU-{s[:8]}-{s[8:12]}-{s[12:16]}-{s[16:20]}-{s[20:32]}")
    return out


class Estate:
    """Per-GPU behaviour and the counter state carried across days."""

    def __init__(self, n: int, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        self.ids = np.array(gpu_ids(n), dtype=object)
        # 0 idle, 1 bursty, 2 busy
        self.kind = rng.choice(3, size=n, p=[0.35, 0.3, 0.35])
        self.busy_mean = rng.uniform(45, 90, n)
        self.burst_p = rng.uniform(0.05, 0.5, n)  # share of 10-min blocks with a job running
        self.fb_hold = rng.random(n) < 0.5  # idle GPUs that still hold framebuffer
        self.gap_p = rng.uniform(0, 0.02, n)  # per-block probability of a scrape gap
        self.reset_day = np.where(rng.random(n) < 0.05, rng.integers(1, 7, n), -1)
        self.busy = rng.integers(0, 10**9, n).astype(np.int64)
        self.idle = rng.integers(0, 10**9, n).astype(np.int64)
        self.energy = rng.integers(0, 10**12, n).astype(np.int64)
        self.last_u = np.zeros(n)
        self.bios = np.array([f"4221{i:04x}-0000-4000-8000-{i:012x}" for i in range(n)], dtype=object)

    def day(self, d: int, lo: int, hi: int, step_s: float, rng: np.random.Generator) -> pa.Table:
        g = hi - lo
        per = int(86400 / step_s)
        base = (T0 + timedelta(days=d)).timestamp() * 1000.0
        grid = base + np.arange(per) * step_s * 1000.0
        ts = grid[None, :] + rng.uniform(-300, 300, (g, per))
        ts[:, 0] = np.maximum(ts[:, 0], base)  # stay inside the day partition
        ts = np.round(ts).astype(np.int64)
        blocks = max(1, per // 60)
        bl = np.minimum(np.arange(per) // 60, blocks - 1)
        kind = self.kind[lo:hi, None]
        on = rng.random((g, blocks)) < self.burst_p[lo:hi, None]
        u = np.zeros((g, per))
        idle_spike = rng.random((g, per)) < 0.01
        u = np.where(kind == 0, np.where(idle_spike, rng.uniform(5, 60, (g, per)), 0.0), u)
        burst = np.where(on[:, bl], np.clip(rng.normal(75, 15, (g, per)), 1, 100), 0.0)
        u = np.where(kind == 1, burst, u)
        busy = np.clip(rng.normal(self.busy_mean[lo:hi, None], 12, (g, per)), 0, 100)
        u = np.where(kind == 2, busy, u)
        u = np.round(u)
        # counters: the interval ending at sample i accrues the utilization held since i-1
        dt = np.diff(ts, axis=1, prepend=(ts[:, :1] - int(step_s * 1000)))
        prev_u = np.concatenate([self.last_u[lo:hi, None], u[:, :-1]], axis=1)
        dbusy = np.round(prev_u / 100.0 * dt).astype(np.int64)
        didle = dt - dbusy
        power_mw = (55_000 + prev_u * 3_000 + rng.normal(0, 1500, (g, per))).astype(np.int64)
        de = power_mw * dt // 1000
        busy_c = self.busy[lo:hi, None] + np.cumsum(dbusy, axis=1)
        idle_c = self.idle[lo:hi, None] + np.cumsum(didle, axis=1)
        en_c = self.energy[lo:hi, None] + np.cumsum(de, axis=1)
        resets = np.nonzero(self.reset_day[lo:hi] == d)[0]
        for r in resets:  # agent restart at midday: counters restart from 0
            k = per // 2
            busy_c[r, k:] -= busy_c[r, k - 1]
            idle_c[r, k:] -= idle_c[r, k - 1]
            en_c[r, k:] -= en_c[r, k - 1]
        self.busy[lo:hi] = busy_c[:, -1]
        self.idle[lo:hi] = idle_c[:, -1]
        self.energy[lo:hi] = en_c[:, -1]
        self.last_u[lo:hi] = u[:, -1]
        fb = np.where(
            u > 0,
            rng.uniform(0.3, 0.9, (g, per)) * FB_TOTAL,
            np.where(self.fb_hold[lo:hi, None], 20 * 2**30, 400 * 2**20),
        ).astype(np.int64)
        keep = ~(rng.random((g, blocks)) < self.gap_p[lo:hi, None])[:, bl]  # 10-min scrape gaps
        gidx = np.broadcast_to(np.arange(lo, hi)[:, None], (g, per))
        m = keep.ravel()
        ids = pa.DictionaryArray.from_arrays(
            pa.array(gidx.ravel()[m] - lo, pa.int32()), pa.array(list(self.ids[lo:hi]), pa.string())
        )
        bios = pa.DictionaryArray.from_arrays(
            pa.array(gidx.ravel()[m] - lo, pa.int32()), pa.array(list(self.bios[lo:hi]), pa.string())
        )
        return pa.table(
            {
                "ts": pa.array(ts.ravel()[m], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                "gpu_uuid": ids.cast(pa.string()),
                "source": pa.array(np.full(int(m.sum()), "agent", dtype=object), pa.string()),
                "vm_bios_uuid": bios.cast(pa.string()),
                "util_percent": pa.array(u.ravel()[m].astype(np.uint8)),
                "busy_ms_total": pa.array(busy_c.ravel()[m]),
                "idle_ms_total": pa.array(idle_c.ravel()[m]),
                "fb_used_bytes": pa.array(fb.ravel()[m]),
                "fb_total_bytes": pa.array(np.full(int(m.sum()), FB_TOTAL, np.int64)),
                "power_milliwatts": pa.array(power_mw.ravel()[m].astype(np.int32)),
                "energy_millijoules_total": pa.array(en_c.ravel()[m]),
            }
        )


def generate(store: Store, gpus: int, days: int, step_s: float, chunk: int = 250) -> int:
    est = Estate(gpus)
    rng = np.random.default_rng(42)
    rows = 0
    for d in range(days):
        for lo in range(0, gpus, chunk):
            t = est.day(d, lo, min(gpus, lo + chunk), step_s, rng)
            rows += store.append("gpu_sample", t)
            del t
    return rows


REPORT_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from accelmon.config import parse
from accelmon.report.cli import run_report
from accelmon.store.writer import Store
st = Store(sys.argv[1])
cfg = parse({}, "<bench>")
t = time.perf_counter()
rc = run_report(st, cfg, since="all", out_dir=Path(sys.argv[2]), progress=False)
dt_s = time.perf_counter() - t
print(json.dumps({"rc": rc, "report_s": dt_s, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def naive(store: Store, gpus: list[str], threshold: float = 15.0, min_cov: float = 0.5,
          min_covered_ms: float = 3.6e6) -> tuple[float, dict]:
    """The same underutilization answer with a plain Python loop over rows (counters, resets)."""
    import duckdb  # noqa: F401  (the rows are read with the store's DuckDB views)

    t = time.perf_counter()
    con = store.connect()
    rows = con.execute(
        "SELECT gpu_uuid, epoch_ms(ts), busy_ms_total, idle_ms_total, util_percent FROM gpu_sample "
        "WHERE gpu_uuid IN (SELECT unnest(?)) ORDER BY gpu_uuid, ts", [gpus]).fetchall()
    out: dict[str, dict] = {}
    prev = None
    busy = cov = 0.0
    first = 0
    for g, ts, b, i, _u in rows:
        if prev is None or prev[0] != g:
            if prev is not None:
                out[prev[0]] = {"busy": busy, "cov": cov, "span": prev[1] - first}
            busy = cov = 0.0
            first = ts
        else:
            db = b - prev[2] if b >= prev[2] else b
            di = i - prev[3] if i >= prev[3] else i
            tot = db + di
            if tot > 0:
                c = min(tot, ts - prev[1])
                busy += c * db / tot
                cov += c
        prev = (g, ts, b, i)
    if prev is not None:
        out[prev[0]] = {"busy": busy, "cov": cov, "span": prev[1] - first}
    res = {}
    for g, v in out.items():
        mean = 100.0 * v["busy"] / v["cov"] if v["cov"] else None
        # coverage against presence: no inventory here, so first to last sample (docs/analytics.md)
        covr = min(v["cov"] / v["span"], 1.0) if v["span"] > 0 else 0.0
        judged = covr >= min_cov and v["cov"] >= min_covered_ms and mean is not None
        res[g] = {"mean": mean, "flag": (mean < threshold) if judged else None}
    return time.perf_counter() - t, res


if __name__ == "__main__":
    import json
    import subprocess

    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--step", type=float, default=10.0)
    ap.add_argument("--dir", type=Path, default=None, help="reuse/keep this data dir (generated when empty)")
    a = ap.parse_args()
    d = a.dir or Path(tempfile.mkdtemp(prefix="accelmon-bench-"))
    st = Store(d)
    try:
        if not [p for p in st.partitions("gpu_sample") if p != "1970-01-01"]:
            t = time.time()
            n = generate(st, a.gpus, a.days, a.step)
            print(f"generated rows={n} in {time.time() - t:.1f}s dir={d} "
                  f"parquet_mb={st.disk_bytes('gpu_sample') / 2**20:.0f}", file=sys.stderr)
        gc.collect()
        # the report in a fresh process: its peak RSS is the report's alone
        out = Path(tempfile.mkdtemp(prefix="accelmon-bench-out-"))
        p = subprocess.run([sys.executable, "-c", REPORT_CHILD, str(d), str(out)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        if p.returncode != 0:
            print(p.stderr, file=sys.stderr)
            sys.exit(1)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        doc = json.loads((out / "findings.json").read_text())
        got = {g["gpu"]: g for g in doc["gpus"]}
        ids = sorted(got)
        subset = ids[:: max(1, len(ids) // max(1, len(ids) // 100))][: max(1, len(ids) // 100)]
        naive_s, nres = naive(st, subset)
        for g in subset:  # both methods agree on the subset
            assert abs((got[g]["mean_util_percent"] or 0) - (nres[g]["mean"] or 0)) < 1e-6, g
            assert got[g]["underutilized"] == nres[g]["flag"], g
        naive_all = naive_s * len(ids) / len(subset)
        print(f"gpus={len(ids)} samples={doc['stats']['rows']} underutilized={doc['summary']['underutilized']} "
              f"insufficient={doc['summary']['insufficient_data']} naive_subset_gpus={len(subset)} "
              f"naive_subset_s={naive_s:.2f} naive_extrapolated_s={naive_all:.1f} cpus={os.cpu_count()} "
              f"load1={os.getloadavg()[0]:.1f}")
        print(f"report_s={r['report_s']:.2f} rss_mb={r['rss_mb']:.0f} speedup_vs_naive={naive_all / r['report_s']:.1f}")
        shutil.rmtree(out, ignore_errors=True)
    finally:
        if a.dir is None:
            shutil.rmtree(d, ignore_errors=True)
