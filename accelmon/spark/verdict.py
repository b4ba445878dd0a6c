"""The underutilized / hollow / insufficient-data / MIG verdicts of a Spark run, as ``findings`` rows.

What runs where (docs/spark.md): the per-GPU figures come from the executors
(accelmon/spark/figures.py, proportional to the samples); the verdict is a decision per GPU (one row
each) taken on the driver by **the same functions as the DuckDB path** — ``identity.gpu_vm_map`` (the
one GPU↔VM rule), ``presence.presence`` (coverage against presence), ``verdict.judge`` and
``activity.judge_hollow`` (thresholds from config) — so the two paths cannot drift apart in a rule.
Those functions read the inventory (``inv_*``, ``agent_gpu``: small, snapshots of VMs) through DuckDB;
here the inventory tables are read by Spark from the same storage and handed to an in-memory DuckDB
connection with the store's own view definitions, so a store on HDFS or S3 works the same.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from accelmon.analytics import activity, findings, identity, presence, verdict
from accelmon.analytics.consolidation import Plan
from accelmon.analytics.window import Window
from accelmon.spark.figures import ACTIVITY_SCHEMA, gpu_activity, gpu_metrics, to_polars
from accelmon.spark.session import read_table
from accelmon.store.catalog import VIEWS
from accelmon.store.writer import Store

INVENTORY_TABLES = ("inv_vcenter", "inv_host", "inv_vm", "inv_vm_gpu", "agent_gpu")
DRIVER_VIEWS = ("hosts", "vms", "vm_gpu")
GPU_KINDS = ("underutilized", "hollow", "insufficient_data", "mig_unreported")


@dataclass
class SparkAnalysis:
    run_id: str
    generated_at: dt.datetime
    window: Window
    gpus: pl.DataFrame  # one row per GPU: figures, presence, status, verdict_reason (as analyze().gpus)
    rows: list[dict[str, Any]]  # findings rows of the GPU verdicts


def _naive_ts(t: pa.Table) -> pa.Table:
    """Timestamps as naive UTC TIMESTAMP (microseconds), as the store's DuckDB views show them."""
    cols = [c.cast(pa.timestamp("us")) if pa.types.is_timestamp(c.type) else c for c in t.columns]
    return pa.table(cols, names=t.column_names)


def inventory_connection(spark: Any, root: str, store: Store | None = None) -> Any:
    """In-memory DuckDB with the inventory tables and the store's views over them: the store's own
    connection when the driver has the store root (``store``), else the tables read by Spark from
    ``root`` (HDFS, S3) and handed over as Arrow."""
    if store is not None:
        return store.connect()
    con = duckdb.connect(":memory:")
    for name in INVENTORY_TABLES:
        con.register(f"_{name}", _naive_ts(read_table(spark, root, name).toArrow()))
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}")
    for name in DRIVER_VIEWS:
        con.execute(f"CREATE VIEW {name} AS {VIEWS[name][1]}")
    return con


def thresholds_of(cfg_thresholds: Any) -> dict[str, float]:
    """The thresholds the DuckDB path uses (analytics/analyze.py), from ``[thresholds]``."""
    th = {k: float(getattr(cfg_thresholds, k)) for k in (
        "underutilized_percent", "min_coverage_ratio", "min_covered_duration")}
    th["hollow_percent"] = float(getattr(cfg_thresholds, "hollow_percent", th["underutilized_percent"]))
    return th


def analyze(spark: Any, root: str, samples: Any, window: Window, th: dict[str, float],
            now: dt.datetime | None = None, store: Store | None = None) -> SparkAnalysis:
    """``samples``: gpu_sample rows in the window (:func:`accelmon.spark.intervals.samples_in`);
    ``store``: the store when the driver has its root (inventory read by DuckDB, else by Spark)."""
    samples = samples.cache()
    metrics = to_polars(gpu_metrics(samples))
    act = to_polars(gpu_activity(samples), ACTIVITY_SCHEMA)
    samples.unpersist()
    if act.height == 0:
        act = pl.DataFrame(schema=ACTIVITY_SCHEMA)
    con = inventory_connection(spark, root, store)
    gmap = identity.gpu_vm_map(con, metrics.select("gpu", "vm_bios_uuid"))
    gpus = verdict.judge(
        metrics, verdict.UtilThresholds(th["underutilized_percent"], th["min_coverage_ratio"],
                                        th["min_covered_duration"]),
        presence.presence(con, metrics, gmap, window), presence.mig_modes(con))
    info = gmap.select("gpu", "vcenter_uuid", "vm_moref", "vm_name", "host_name", "cluster_name", "backing",
                       "vgpu_profile", "host_pci_id").unique(subset=["gpu"], keep="first")
    gpus = gpus.join(info, on="gpu", how="left")
    gpus = activity.judge_hollow(gpus, act, activity.activity_sources(con),
                                 underutilized_percent=th["underutilized_percent"],
                                 hollow_percent=th["hollow_percent"])
    generated = now or dt.datetime.now(dt.UTC)
    run_id = f"{generated:%Y%m%dT%H%M%SZ}-spark-{uuid.uuid4().hex[:8]}"
    rows = findings.rows(run_id=run_id, generated_at=generated, window=window, gpus=gpus,
                         numa=pl.DataFrame(), vmotion_flagged=pl.DataFrame(), plan=Plan(),
                         thresholds={"stun_limit_seconds": 0.0, **th})
    return SparkAnalysis(run_id, generated, window, gpus, [r for r in rows if r["kind"] in GPU_KINDS])
