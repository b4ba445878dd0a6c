"""Hourly rollups (docs/store.md, "Rollups"): the report's figures from rollups equal the raw path's,
re-running a day replaces it, and every interval is in the hour of its end sample."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pytest

from accelmon.analytics import rollup
from accelmon.analytics.analyze import analyze
from accelmon.analytics.window import Window
from accelmon.config import ThresholdsConfig
from accelmon.store.writer import Store

T0 = dt.datetime(2025, 3, 3, tzinfo=dt.UTC)
DAYS = 3.5
GIB = 1 << 30


def _agent(gpu: str, seed: int) -> dict[str, list]:
    """Counters every ~60 s with jitter, a counter reset (driver reload) and a 3 h outage."""
    rng = np.random.default_rng(seed)
    n = int(DAYS * 86400 / 60)
    steps = np.rint(60_000 + rng.uniform(-2000, 2000, n)).astype(np.int64)
    steps[n // 3] = 3 * 3_600_000  # outage: the counters carry it
    t = T0.timestamp() * 1000 + 7_000 + np.cumsum(steps)
    util = np.clip(rng.normal(40, 25, n), 0, 100)
    util[rng.random(n) < 0.3] = 0
    busy_inc = np.rint(np.minimum(steps, 60_000) * util / 100).astype(np.int64)
    idle_inc = np.minimum(steps, 60_000) - busy_inc
    e_inc = np.rint(steps * (60 + 2.5 * util)).astype(np.int64)
    busy, idle, energy = np.cumsum(busy_inc), np.cumsum(idle_inc), np.cumsum(e_inc)
    r = 2 * n // 3  # reset: counters start again from the increment
    busy[r:] -= busy[r - 1]
    idle[r:] -= idle[r - 1]
    energy[r:] -= energy[r - 1]
    fb = np.where(rng.random(n) < 0.5, 3 * GIB, GIB // 4).astype(np.int64)
    return {"ts": t.astype(np.int64), "gpu_uuid": [gpu] * n, "source": ["agent"] * n,
            "vm_bios_uuid": [f"bios-{gpu}"] * n, "util_percent": np.rint(util).astype(np.float32),
            "busy_ms_total": busy, "idle_ms_total": idle, "energy_millijoules_total": energy,
            "fb_used_bytes": fb, "fb_total_bytes": np.full(n, 16 * GIB, np.int64)}


def _held(gpu: str, source: str, seed: int, step_s: float = 30.0) -> dict[str, list]:
    """A gauge-only source: util and power every ~30 s, a 2 h gap (excluded), idle stretches."""
    rng = np.random.default_rng(seed)
    n = int(DAYS * 86400 / step_s)
    steps = np.rint(step_s * 1000 + rng.uniform(-400, 400, n)).astype(np.int64)
    steps[n // 2] = 2 * 3_600_000
    t = T0.timestamp() * 1000 + 1_000 + np.cumsum(steps)
    util = np.rint(np.clip(rng.normal(10, 8, n), 0, 100))
    util[(np.arange(n) // 200) % 4 == 0] = 0
    return {"ts": t.astype(np.int64), "gpu_uuid": [gpu] * n, "source": [source] * n,
            "util_percent": util.astype(np.float32), "power_milliwatts": np.rint(50_000 + 2000 * util).astype(np.int32),
            "fb_used_bytes": np.full(n, 2 * GIB, np.int64)}


def _write(store: Store, cols: dict[str, list]) -> None:
    import pyarrow as pa

    d = dict(cols)
    d["ts"] = pa.array(np.asarray(d["ts"]), pa.int64()).cast(pa.timestamp("ms", "UTC"))
    store.append("gpu_sample", pa.table(d))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    s = Store(tmp_path_factory.mktemp("rollup"))
    _write(s, _agent("GPU-a", 1))
    _write(s, _agent("GPU-b", 2))
    _write(s, _held("GPU-b", "dcgm", 3))  # a second source of the same GPU: the most covered one is chosen
    _write(s, _held("GPU-c", "dcgm", 4))
    s.compact()
    done = rollup.run(s, now=T0 + dt.timedelta(days=10))
    assert len(done) == 4 and all(n > 0 for n in done.values())
    return s


FIGURES = ("mean_util_percent", "idle_ratio", "covered_hours", "busy_hours", "idle_hours", "allocated_idle_hours",
           "gap_hours", "energy_joules", "idle_energy_joules", "idle_power_watts", "mean_power_watts",
           "samples", "first_ms", "last_ms", "fb_max_bytes", "fb_total_bytes")
EXACT = ("gpu", "source", "vm_bios_uuid", "status", "method", "underutilized")


def _compare(store: Store, w: Window) -> None:
    th = ThresholdsConfig()
    raw = analyze(store, th, w, rollup_after=None)
    rolled = analyze(store, th, w, rollup_after=86400.0)
    assert raw.stats["rollup_hours"] == 0
    assert rolled.stats["rollup_hours"] > 24 * 3  # the rollup path was taken, for most of the window
    a, b = raw.gpus.sort("gpu"), rolled.gpus.sort("gpu")
    assert a["gpu"].to_list() == ["GPU-a", "GPU-b", "GPU-c"]
    for c in EXACT:
        if c in a.columns:
            assert a[c].to_list() == b[c].to_list(), c
    for c in FIGURES:
        for gpu, x, y in zip(a["gpu"], a[c].to_list(), b[c].to_list(), strict=True):
            if x is None or y is None:
                assert x is None and y is None, (c, gpu, x, y)
            else:
                assert math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-9), (c, gpu, x, y)
    # the held series' gap is excluded on both paths; the counter series' outage is covered
    assert a.filter(a["gpu"] == "GPU-c")["gap_hours"][0] > 1.9


def test_rollup_path_equals_raw_path_unaligned_window(store: Store) -> None:
    _compare(store, Window(T0 + dt.timedelta(hours=2, minutes=17, seconds=3),
                           T0 + dt.timedelta(days=3, hours=5, minutes=42)))


def test_rollup_path_equals_raw_path_hour_aligned_window(store: Store) -> None:
    _compare(store, Window(T0 + dt.timedelta(hours=1), T0 + dt.timedelta(days=3, hours=9)))


def test_hours_sum_to_the_day_and_rerun_replaces(store: Store) -> None:
    """Σ over a day's hours of busy/covered = the raw figure of the intervals ending in that day, and
    rolling the day up again leaves one row per (gpu, source, hour), the same figures."""
    from accelmon.analytics.samples import aggregate
    from accelmon.analytics.utilization import series_metrics

    day = (T0 + dt.timedelta(days=1)).date()
    con = store.connect()
    q = ("SELECT gpu_uuid, source, sum(busy_s), sum(covered_s), count(*), count(DISTINCT hour_start) "
         "FROM gpu_rollup_hour WHERE date = ? GROUP BY ALL ORDER BY ALL")
    before = con.execute(q, [day]).fetchall()
    rollup.rollup_day(store, day, now=T0 + dt.timedelta(days=10))
    con = store.connect()
    after = con.execute(q, [day]).fetchall()
    # the same rows and figures (sums may differ in the last bit: DuckDB's parallel summation order)
    assert [(r[0], r[1], r[4], r[5]) for r in after] == [(r[0], r[1], r[4], r[5]) for r in before]
    assert all(math.isclose(a[i], b[i], rel_tol=1e-12) for a, b in zip(after, before, strict=True) for i in (2, 3))
    assert all(r[4] == r[5] for r in after)  # no duplicate hours
    d0 = rollup.day_start(day)
    sa = aggregate(store, d0 - rollup.LOOKBACK, d0 + rollup.DAY - dt.timedelta(milliseconds=1), count_from=d0)
    raw = {(r["gpu_uuid"], r["source"]): r for r in series_metrics(sa).to_dicts()}
    for gpu, src, busy_s, cov_s, _, _ in after:
        if src == "agent":  # counters: no gap rule involved, the sums are exact
            assert math.isclose(busy_s * 1000, raw[(gpu, src)]["busy_ms"], rel_tol=1e-12)
            assert math.isclose(cov_s * 1000, raw[(gpu, src)]["cov_ms"], rel_tol=1e-12)


def test_short_window_reads_raw_and_unrolled_hours_read_raw(store: Store) -> None:
    """A window no longer than rollup_after reads raw samples; hours never rolled up are read raw."""
    from accelmon.analytics import longwindow

    con = store.connect()
    w = Window(T0 + dt.timedelta(hours=3), T0 + dt.timedelta(hours=30))
    assert longwindow.figures(store, con, w, rollup_after=2 * 86400.0).stats["rollup_hours"] == 0
    h0 = T0 + dt.timedelta(hours=4)
    assert rollup.rolled_through(store, h0, T0 + dt.timedelta(days=30)) == T0 + dt.timedelta(days=4)


def test_sharded_rollups_each_shard_its_own_and_the_union_equals_raw(tmp_path: Path) -> None:
    """Two daemons on one root (docs/store.md, "Sharded writers"): each rolls up only its own shard's
    samples into its own shard; the union of the rollups is the rollup of the union (no GPU twice), and
    an hour one shard has not rolled up is read raw for all."""
    site_a, site_b = Store(tmp_path, shard="site-a"), Store(tmp_path, shard="site-b")
    _write(site_a, _agent("GPU-a", 1))
    _write(site_b, _agent("GPU-b", 2))
    _write(site_b, _held("GPU-c", "dcgm", 4))
    w = Window(T0 + dt.timedelta(hours=1), T0 + dt.timedelta(days=3, hours=9))
    th = ThresholdsConfig()
    rollup.run(site_a, now=T0 + dt.timedelta(days=10))
    only_a = analyze(site_a, th, w, rollup_after=86400.0)
    assert only_a.stats["rollup_hours"] == 0  # site-b has not rolled up: every hour read raw
    rollup.run(site_b, now=T0 + dt.timedelta(days=10))
    con = site_a.connect()
    per_shard = dict(con.execute("SELECT shard, list(DISTINCT gpu_uuid ORDER BY gpu_uuid) FROM gpu_rollup_hour "
                                 "GROUP BY shard").fetchall())
    assert per_shard == {"site-a": ["GPU-a"], "site-b": ["GPU-b", "GPU-c"]}
    raw = analyze(site_a, th, w, rollup_after=None)
    rolled = analyze(site_a, th, w, rollup_after=86400.0)
    assert rolled.stats["rollup_hours"] > 24 * 3
    a, b = raw.gpus.sort("gpu"), rolled.gpus.sort("gpu")
    assert a["gpu"].to_list() == b["gpu"].to_list() == ["GPU-a", "GPU-b", "GPU-c"]
    for c in ("mean_util_percent", "covered_hours", "busy_hours", "idle_hours", "energy_joules"):
        for x, y in zip(a[c].to_list(), b[c].to_list(), strict=True):
            assert (x is None and y is None) or math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-9), c
