"""Hourly per-GPU rollups of ``gpu_sample`` into ``gpu_rollup_hour`` (docs/store.md, "Rollups").

One day at a time: the samples of [D − 24 h, end of D] are aggregated by :func:`samples.aggregate`
with the interval arithmetic of the raw path, counting only the intervals whose **end sample** lies in
day D and grouping them by the UTC hour of that end sample. Held-gauge gaps are decided with the
series' median held step over the day. The day is written as one new generation of its partition
(``Store.replace_partition``), so re-running it replaces it. ``state/rollup.<shard>.json`` records per day the
hour it is complete through and a fingerprint of the raw files it read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from accelmon.analytics.samples import aggregate
from accelmon.analytics.utilization import GAP_DQ, median_dq
from accelmon.store.writer import EPOCH_PARTITION, Store

HOUR_MS = 3_600_000
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
LOOKBACK = dt.timedelta(days=1)
TABLE = "gpu_rollup_hour"


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def floor_hour(t: dt.datetime) -> dt.datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def hour_rows(store: Store, day: dt.date, through: dt.datetime | None = None,
              threads: int | None = None) -> pl.DataFrame:
    """The ``gpu_rollup_hour`` rows of ``day`` for the hours before ``through`` (default: the whole day)."""
    d0 = day_start(day)
    end = d0 + DAY if through is None else max(d0, min(d0 + DAY, through))
    if end <= d0:
        return pl.DataFrame()
    start = d0 - LOOKBACK
    # this shard's samples only: each daemon rolls up what it wrote (docs/store.md, "Sharded writers")
    sa = aggregate(store, start, end - dt.timedelta(milliseconds=1), count_from=d0, bucket_ms=HOUR_MS,
                   heat_cells=1, threads=threads, shard=store.shard)
    agg, stats = sa.agg, sa.stats
    if not stats.height:
        return pl.DataFrame()
    med = median_dq(agg.filter(pl.col("held")))  # per series over the day (the rollup's unit)
    rows = agg.join(med, on="sid", how="left").with_columns(
        gap=(pl.col("held") & (pl.col("dq") > pl.col("med_dq") + GAP_DQ)).fill_null(False))
    good = rows.filter(~pl.col("gap"))
    idle = pl.col("bin") == 0
    energy = pl.col("e_ctr_mj") + pl.col("e_pow_mj")
    m = good.group_by("sid", "bucket").agg(
        intervals=pl.col("n").sum(),
        held_intervals=pl.col("n").filter(pl.col("held")).sum(),
        cov_ms=pl.col("cov_ms").sum(),
        busy_ms=pl.col("busy_ms").sum(),
        alloc_idle_ms=(pl.col("alloc_ms") - pl.col("alloc_busy_ms")).sum(),
        zero_ms=pl.col("cov_ms").filter(idle).sum(),
        e_mj=energy.sum(),
        idle_e_mj=energy.filter(idle).sum(),
        dt_ms=pl.col("dt_ms").sum(),
    )
    gaps = rows.filter(pl.col("gap")).group_by("sid", "bucket").agg(
        gap_ms=pl.col("dt_ms").sum(), gap_e_mj=pl.col("e_ctr_mj").sum())
    out = (stats.join(m, on=["sid", "bucket"], how="full", coalesce=True)
           .join(gaps, on=["sid", "bucket"], how="full", coalesce=True)
           .join(sa.series, on="sid", how="left"))
    zero = ("intervals", "held_intervals", "cov_ms", "busy_ms", "alloc_idle_ms", "zero_ms", "e_mj", "idle_e_mj",
            "dt_ms", "gap_ms", "gap_e_mj", "samples")
    out = out.with_columns(pl.col(c).fill_null(0) for c in zero)
    start_ms = int(start.timestamp() * 1000)

    def ts(col: str) -> pl.Expr:
        return pl.col(col).cast(pl.Datetime("ms", "UTC"))

    def null0(e: pl.Expr) -> pl.Expr:  # no energy figure at all: NULL, never 0
        return pl.when(pl.col("e_mj") + pl.col("gap_e_mj") > 0).then(e)

    return out.select(
        hour_start=(start_ms + pl.col("bucket").cast(pl.Int64) * HOUR_MS).cast(pl.Datetime("ms", "UTC")),
        gpu_uuid="gpu_uuid", source="source", vm_bios_uuid="vm_bios_uuid",
        busy_s=pl.col("busy_ms") / 1000.0,
        idle_s=(pl.col("cov_ms") - pl.col("busy_ms")) / 1000.0,
        covered_s=pl.col("cov_ms") / 1000.0,
        samples=pl.col("samples").cast(pl.Int32),
        fb_used_max_bytes=pl.when(pl.col("fb_max_bytes") >= 0).then(pl.col("fb_max_bytes")),
        fb_total_bytes=pl.when(pl.col("fb_total_bytes") > 0).then(pl.col("fb_total_bytes")),
        energy_j=null0(pl.col("e_mj") / 1000.0),
        idle_full_s=pl.col("zero_ms") / 1000.0,
        idle_full_energy_j=null0(pl.col("idle_e_mj") / 1000.0),
        alloc_idle_s=pl.col("alloc_idle_ms") / 1000.0,
        gap_s=pl.col("gap_ms") / 1000.0,
        gap_energy_j=pl.when(pl.col("gap_e_mj") > 0).then(pl.col("gap_e_mj") / 1000.0),
        intervals=pl.col("intervals").cast(pl.Int32),
        held_intervals=pl.col("held_intervals").cast(pl.Int32),
        interval_s=pl.col("dt_ms") / 1000.0,
        first_ts=ts("first_ms"), last_ts=ts("last_ms"),
    ).sort("gpu_uuid", "source", "hour_start")


# ---------------------------------------------------------------------------------------------- state
def _state_path(store: Store, shard: str | None = None) -> Path:
    """Per shard: each daemon rolls up its own shard and records it in its own file."""
    return store.root / "state" / f"rollup.{shard or store.shard}.json"


def load_state(store: Store, shard: str | None = None) -> dict[str, Any]:
    try:
        doc = json.loads(_state_path(store, shard).read_text())
    except (OSError, ValueError):
        return {"days": {}}
    return doc if isinstance(doc, dict) and isinstance(doc.get("days"), dict) else {"days": {}}


def save_state(store: Store, doc: dict[str, Any]) -> None:
    p = _state_path(store)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, p)


def fingerprint(store: Store, day: dt.date) -> str:
    """The raw files a rollup of ``day`` reads (the day and the day before): names and sizes."""
    parts = []
    for d in (day - dt.timedelta(days=1), day):
        for f in store.own_files("gpu_sample", d.isoformat()):
            try:
                parts.append(f"{d}/{f.name}:{f.stat().st_size}")
            except OSError:
                continue
    return "|".join(parts)


def rollup_day(store: Store, day: dt.date, now: dt.datetime | None = None, threads: int | None = None) -> int:
    """Roll ``day`` up through the last complete hour before ``now``; replace its partition. Returns rows."""
    now = now or dt.datetime.now(dt.UTC)
    through = min(day_start(day) + DAY, floor_hour(now))
    fp = fingerprint(store, day)
    rows = hour_rows(store, day, through, threads=threads)
    store.replace_partition(TABLE, day.isoformat(), rows.to_arrow() if rows.height else None)
    doc = load_state(store)
    doc["days"][day.isoformat()] = {"through": through.isoformat(), "fingerprint": fp,
                                    "at": now.isoformat()}
    save_state(store, doc)
    return rows.height


def raw_days(store: Store) -> list[dt.date]:
    return [dt.date.fromisoformat(p) for p in store.own_partitions("gpu_sample") if p != EPOCH_PARTITION]


def pending(store: Store, now: dt.datetime | None = None) -> list[dt.date]:
    """Days the job must (re)roll: never rolled, not complete through the last complete hour, or whose
    raw files changed since (late imports, backfill, compaction)."""
    now = now or dt.datetime.now(dt.UTC)
    days = load_state(store)["days"]
    out = []
    for day in raw_days(store):
        want = min(day_start(day) + DAY, floor_hour(now))
        if want <= day_start(day):
            continue
        st = days.get(day.isoformat())
        if (st is None or dt.datetime.fromisoformat(st["through"]) < want
                or st.get("fingerprint") != fingerprint(store, day)):
            out.append(day)
    return out


def run(store: Store, *, from_: dt.date | None = None, to: dt.date | None = None, now: dt.datetime | None = None,
        force: bool = True, threads: int | None = None) -> dict[str, int]:
    """Roll up the raw days in [from_, to] (all with ``force``; else only the pending ones)."""
    todo = raw_days(store) if force else pending(store, now)
    done: dict[str, int] = {}
    for day in todo:
        if (from_ is not None and day < from_) or (to is not None and day > to):
            continue
        done[day.isoformat()] = rollup_day(store, day, now, threads=threads)
    return done


def rolled_through(store: Store, h0: dt.datetime, h1: dt.datetime) -> dt.datetime:
    """The end Hr ≤ h1 of the contiguous hours from h0 that every shard holding samples has rolled
    up (h0 itself when none): readers see the union of the shards, so an hour one shard has not
    rolled up yet is read raw for all."""
    ends = [_rolled_through(load_state(store, s)["days"], h0, h1) for s in store.shards("gpu_sample")]
    return min(ends, default=h0)


def _rolled_through(days: dict[str, Any], h0: dt.datetime, h1: dt.datetime) -> dt.datetime:
    hr = h0
    while hr < h1:
        st = days.get(hr.date().isoformat())
        if st is None:
            break
        through = dt.datetime.fromisoformat(st["through"])
        if through <= hr:
            break
        hr = min(through, h1)  # a day rolled part-way stops the loop at the next turn
    return hr
