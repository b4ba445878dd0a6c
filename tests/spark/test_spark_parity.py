"""Spark (local[2]) against the DuckDB path on one small estate store: the same per-GPU figures,
the same GPUs flagged per kind, findings stored with a run id, hourly rollups that sum to the
window's figures and that a re-run replaces (docs/spark.md, "The comparison test").

The store: the analytics test estate (inventory snapshots, agents, counter samples, power) plus
series that exercise every rule: held ``import`` traces with scrape gaps, a counter reset, a GPU
written by two sources, a hollow GPU (busy on time, SM-active counters low), a GPU with DCGM-style
activity gauges, a GPU seen for 20 minutes."""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from accelmon.analytics import rollup
from accelmon.analytics.analyze import analyze
from accelmon.analytics.window import Window
from accelmon.cli import app
from accelmon.config import load
from accelmon.spark import job
from accelmon.spark.session import build_session
from accelmon.store.writer import Store
from tests.analytics.estate import DAYS, T0, write_estate
from tests.analytics.synth import held_trace

GIB = 1 << 30
WINDOW = Window(T0, T0 + dt.timedelta(days=DAYS), "test")
FIGURES = ("mean_util_percent", "p95_util_percent", "idle_ratio", "covered_hours", "gap_hours", "busy_hours",
           "allocated_idle_hours", "energy_joules", "idle_energy_joules", "coverage_ratio", "presence_seconds",
           "effective_util_percent", "p95_sm_active_percent", "sm_occupancy_percent", "activity_covered_hours")


def _counter_rows(gpu: str, source: str, util: float, *, sm: float | None = None, step_s: int = 60,
                  hours: float = 48, reset_at: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 // step_s)
    frac = np.clip(rng.normal(util, util / 5, n), 0, 100) / 100.0
    busy = np.cumsum(np.rint(frac * step_s * 1000)).astype(np.int64)
    idle = np.cumsum(np.rint((1 - frac) * step_s * 1000)).astype(np.int64)
    act = None if sm is None else np.cumsum(np.rint(frac * (sm / util) * step_s * 1000)).astype(np.int64)
    energy = np.cumsum(np.full(n, 100_000 * step_s)).astype(np.int64)
    if reset_at is not None:  # the agent restarted: every counter starts again near 0
        for c in (busy, idle, energy) + ((act,) if act is not None else ()):
            c[reset_at:] -= c[reset_at - 1]
    rows = []
    for i in range(n):
        rows.append({"ts": T0 + dt.timedelta(seconds=step_s * (i + 1)), "gpu_uuid": gpu, "source": source,
                     "util_percent": float(100 * frac[i]), "busy_ms_total": int(busy[i]), "idle_ms_total": int(idle[i]),
                     "fb_used_bytes": 6 * GIB, "fb_total_bytes": 80 * GIB, "power_milliwatts": 100_000,
                     "energy_millijoules_total": int(energy[i]),
                     "sm_active_ms_total": None if act is None else int(act[i])})
    return rows


def _gauge_rows(gpu: str, util: float, sm: float, *, step_s: int = 30, hours: float = 40) -> list[dict[str, Any]]:
    """dcgm-exporter style: gauges only (held utilization, SM-active over the period ending at the reading)."""
    rng = np.random.default_rng(7)
    n = int(hours * 3600 // step_s)
    t = np.cumsum(np.full(n, step_s, dtype=np.int64))
    t[n // 2:] += 3 * 3600  # a 3 h scrape gap: a gap for both rules
    return [{"ts": T0 + dt.timedelta(seconds=int(t[i])), "gpu_uuid": gpu, "source": "dcgm",
             "util_percent": float(np.clip(rng.normal(util, 5), 0, 100)),
             "sm_active_percent": float(np.clip(rng.normal(sm, 3), 0, 100)), "sm_occupancy_percent": 20.0,
             "power_milliwatts": 70_000, "fb_used_bytes": 2 * GIB} for i in range(n)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    st = Store(tmp_path_factory.mktemp("spark") / "data")
    write_estate(st)
    extra: list[dict[str, Any]] = []
    for i, (target, gaps) in enumerate(((4.0, 2), (40.0, 3))):  # held traces with scrape gaps
        extra += held_trace(f"trace-held-{i}", target, hours=30, seed=10 + i, gaps=gaps).rows("import")
    extra += _counter_rows("GPU-reset-0001", "agent", 9.0, reset_at=1000, seed=1)
    extra += _counter_rows("GPU-hollow-0001", "agent", 70.0, sm=6.0, seed=2)
    extra += _counter_rows("GPU-two-src-0001", "agent", 30.0, seed=3)
    extra += _counter_rows("GPU-two-src-0001", "dcgm", 31.0, hours=20, step_s=30, seed=4)
    extra += _counter_rows("GPU-short-0001", "agent", 3.0, hours=0.34, seed=5)
    extra += _gauge_rows("GPU-dcgm-gauge-01", 50.0, 8.0)
    st.append("gpu_sample", extra)
    return st


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    s = build_session("local[2]", "accelmon-test", {"spark.sql.shuffle.partitions": "2",
                                                     "spark.driver.memory": "512m",
                                                     "spark.default.parallelism": "2"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def duck(store: Store) -> pl.DataFrame:
    return analyze(store, load(None).thresholds, WINDOW).gpus


@pytest.fixture(scope="module")
def spark_report(store: Store, spark: Any) -> tuple[str, pl.DataFrame]:
    """``accelmon spark report`` through the CLI (the module's session is reused by getOrCreate)."""
    res = CliRunner().invoke(app, ["--data-dir", str(store.root), "spark", "report", "--master", "local[2]",
                                   "--from", WINDOW.start.isoformat(), "--to", WINDOW.end.isoformat()])
    assert res.exit_code == 0, res.output
    run_id = res.output.split("findings    run ", 1)[1].split(":", 1)[0]
    con = store.connect()
    rows = pl.from_arrow(con.sql("SELECT kind, subject, value, evidence_json FROM findings WHERE run_id = ?",
                                 params=[run_id]).arrow())
    assert isinstance(rows, pl.DataFrame)
    return run_id, rows


def _close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return a is None and b is None or (isinstance(b, float) and math.isnan(b))
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def test_spark_figures_equal_duckdb(store: Store, spark: Any, duck: pl.DataFrame) -> None:
    from accelmon.spark import verdict
    from accelmon.spark.intervals import samples_in
    from accelmon.spark.session import read_table

    a = verdict.analyze(spark, str(store.root), samples_in(read_table(spark, str(store.root), "gpu_sample"),
                                                           WINDOW.start_ms, WINDOW.end_ms), WINDOW,
                        verdict.thresholds_of(load(None).thresholds))
    sp = {r["gpu"]: r for r in a.gpus.to_dicts()}
    dk = {r["gpu"]: r for r in duck.to_dicts()}
    assert set(sp) == set(dk)
    # the store exercises every status the verdict has (except MIG): the comparison means something
    assert {"underutilized", "hollow", "insufficient_data", "ok"} <= {r["status"] for r in dk.values()}
    assert {r["method"] for r in dk.values()} >= {"counters", "held_samples"}
    assert any((r["gap_hours"] or 0) > 0 for r in dk.values())
    for g, d in dk.items():
        s = sp[g]
        assert (s["status"], s["source"], s["sources"], s["method"]) == (
            d["status"], d["source"], d["sources"], d["method"]), g
        for f in FIGURES:
            assert _close(s[f], d[f]), (g, f, s[f], d[f])


def test_spark_findings_stored_like_duckdb(spark_report: tuple[str, pl.DataFrame], duck: pl.DataFrame) -> None:
    run_id, rows = spark_report
    assert "-spark-" in run_id
    for kind in ("underutilized", "hollow", "insufficient_data"):
        want = set(duck.filter(pl.col("status") == kind)["gpu"].to_list())
        got = set(rows.filter(pl.col("kind") == kind)["subject"].to_list())
        assert got == want and want, kind
    d = dict(zip(duck["gpu"].to_list(), duck.to_dicts(), strict=True))
    for r in rows.to_dicts():
        value = {"underutilized": "mean_util_percent", "hollow": "effective_util_percent",
                 "insufficient_data": "coverage_ratio"}.get(r["kind"])
        if value:
            assert _close(r["value"], d[r["subject"]][value]), r


def test_latest_findings_view_sees_the_spark_run(store: Store, spark_report: tuple[str, pl.DataFrame]) -> None:
    run_id, _ = spark_report
    con = store.connect()
    assert {x[0] for x in con.sql("SELECT DISTINCT run_id FROM latest_findings").fetchall()} == {run_id}


def test_rollups_sum_to_window_figures_and_rerun_replaces(store: Store, spark: Any, duck: pl.DataFrame) -> None:
    # the window, then one hour of it again: a re-run replaces its hours (same rows, no duplicates)
    again = (WINDOW.start + dt.timedelta(hours=25), WINDOW.start + dt.timedelta(hours=26))
    counts = []
    for a, b in ((WINDOW.start, WINDOW.end + dt.timedelta(hours=1)), again):
        # the first run goes one hour past the window, so the hour holding its last instant is complete
        with open(os.devnull, "w") as out:
            assert job.run("rollup", data_dir=store.root, master="local[2]", from_=a, to=b, spark=spark, out=out) == 0
        con = store.connect()
        n, distinct = con.execute("SELECT count(*), count(DISTINCT (gpu_uuid, source, hour_start)) "
                                  "FROM gpu_rollup_hour").fetchall()[0]
        assert n == distinct > 0
        counts.append(n)
    assert counts[0] == counts[1]
    r = pl.from_arrow(con.sql("""
        SELECT gpu_uuid AS gpu, source, sum(busy_s) AS busy_s, sum(covered_s) AS covered_s, sum(energy_j) AS e,
               sum(sm_active_s) AS sm_s, sum(activity_covered_s) AS act_s, sum(samples) AS samples,
               max(fb_used_max_bytes) AS fb_max, bool_and(hour_start = date_trunc('hour', hour_start)) AS aligned
        FROM gpu_rollup_hour GROUP BY ALL""").arrow())
    assert isinstance(r, pl.DataFrame)
    j = duck.join(r, on=["gpu", "source"], how="left")
    for x in j.to_dicts():
        assert x["aligned"], x["gpu"]
        assert x["samples_right"] == x["samples"], x["gpu"]
        if x["covered_hours"]:
            assert _close(x["covered_s"] / 3600.0, x["covered_hours"]), x["gpu"]
            assert _close(x["busy_s"] / 3600.0, x["busy_hours"]), x["gpu"]
            assert _close(100.0 * x["busy_s"] / x["covered_s"], x["mean_util_percent"]), x["gpu"]
        if x["e"] is None:  # nothing reported energy or power: NULL in the rollup, 0 J in the window figures
            assert x["energy_joules"] == 0, x["gpu"]
        else:
            assert _close(x["e"], x["energy_joules"]), x["gpu"]
        if x["effective_util_percent"] is not None:
            assert _close(100.0 * x["sm_s"] / x["act_s"], x["effective_util_percent"]), x["gpu"]
        else:
            assert x["sm_s"] is None, x["gpu"]  # missing is NULL, never 0


def test_spark_rollups_equal_the_duckdb_rollups(store: Store, spark: Any) -> None:
    """Spark's hourly rows equal the DuckDB path's (analytics/rollup.py) hour by hour, column by column,
    for the counter series (held-gauge gaps are judged on each path's own sample span: docs/spark.md)."""
    with open(os.devnull, "w") as out:
        assert job.run("rollup", data_dir=store.root, master="local[2]", from_=WINDOW.start,
                       to=WINDOW.end + dt.timedelta(hours=1), spark=spark, out=out) == 0
    con = store.connect()
    sp = pl.from_arrow(con.sql("SELECT * EXCLUDE (date, shard) FROM gpu_rollup_hour").arrow())
    assert isinstance(sp, pl.DataFrame)
    days = sorted({h.date() for h in sp["hour_start"].to_list()})
    dk = pl.concat([rollup.hour_rows(store, d) for d in days], how="diagonal_relaxed")
    keys = ["gpu_uuid", "source", "hour_start"]
    ts = [c for c in ("hour_start", "first_ts", "last_ts")]
    sp = sp.with_columns(pl.col(c).cast(pl.Datetime("ms", "UTC")) for c in ts)
    dk = dk.with_columns(pl.col(c).cast(pl.Datetime("ms", "UTC")) for c in ts)
    j = dk.filter(pl.col("source") == "agent").join(sp, on=keys, how="inner", suffix="_spark")
    assert j.height > 24, j.height
    cols = ("busy_s", "idle_s", "covered_s", "samples", "fb_used_max_bytes", "energy_j", "idle_full_s",
            "idle_full_energy_j", "alloc_idle_s", "intervals", "held_intervals", "interval_s", "first_ts", "last_ts")
    for c in cols:
        for k, a, b in zip(j.select(keys).rows(), j[c].to_list(), j[f"{c}_spark"].to_list(), strict=True):
            assert (a is None and b is None) or a == b or _close(a, b), (c, k, a, b)
