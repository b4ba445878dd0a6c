"""Presence of each GPU in the window: the time it existed to be measured (docs/analytics.md, "Presence").

Definition (ARCHITECTURE.md, "Coverage"): coverage = observed time / the GPU's *presence* in
the window — from the inventory where it is known (the VM powered on with the device
attached), else from the first to the last sample.

* **Inventory part.** vCenter inventory is stored as full snapshots, written whenever
  anything changed (collector/vcenter/source.py), so the state in the snapshot taken at t_i
  holds until the vCenter's next snapshot t_{i+1} (the last one until the window end). From
  the vCenter's first snapshot (or the last one before the window) on, a GPU is present during
  [t_i, t_{i+1}) exactly when its VM (``identity.gpu_vm_map``) is ``poweredOn`` in snapshot t_i
  (``inv_vm.power_state`` = ``runtime.powerState``) and has the GPU's device in that snapshot
  (``inv_vm_gpu``: the mapped ``device_key``, or any GPU device when the map names none).
* **Sample part.** Where the inventory knows nothing — the GPU maps to no VM (trace ids,
  exporters on bare metal), or before the vCenter's first snapshot — presence is the span
  from the first to the last time the GPU was seen: its first/last sample, or an ``agent_gpu``
  report (the agent listed the GPU) in the window if that is earlier/later.

Gaps inside either part count against coverage: they are presence without observation.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from accelmon.analytics.db import frame
from accelmon.analytics.window import Window

PRESENCE_SCHEMA = {"gpu": pl.String, "presence_start_ms": pl.Int64, "presence_end_ms": pl.Int64,
                   "presence_seconds": pl.Float64, "presence_source": pl.String}

_INVENTORY_SQL = """
WITH snap AS (
    SELECT DISTINCT vcenter_uuid, epoch_ms(snapshot_ts) AS t FROM inv_vcenter WHERE epoch_ms(snapshot_ts) <= $we
    UNION
    SELECT DISTINCT vcenter_uuid, epoch_ms(snapshot_ts) AS t FROM inv_vm WHERE epoch_ms(snapshot_ts) <= $we
),
seg AS (  -- the state of snapshot t holds until the vCenter's next snapshot
    SELECT vcenter_uuid, t, greatest(t, $ws) AS s0,
           least(coalesce(lead(t) OVER (PARTITION BY vcenter_uuid ORDER BY t), $we), $we) AS s1
    FROM snap
),
seg_in AS (SELECT * FROM seg WHERE s1 > s0),
known AS (SELECT vcenter_uuid, min(s0) AS known_from_ms FROM seg_in GROUP BY ALL),
dev AS (SELECT DISTINCT vcenter_uuid, epoch_ms(snapshot_ts) AS t, vm_moref, device_key FROM inv_vm_gpu
        WHERE epoch_ms(snapshot_ts) <= $we),
vm_on AS (SELECT DISTINCT vcenter_uuid, epoch_ms(snapshot_ts) AS t, vm_moref FROM inv_vm
          WHERE epoch_ms(snapshot_ts) <= $we AND power_state = 'poweredOn'),
on_seg AS (
    SELECT DISTINCT m.gpu, s.s0, s.s1
    FROM _presence_map m
    JOIN seg_in s ON s.vcenter_uuid = m.vcenter_uuid
    JOIN vm_on v ON v.vcenter_uuid = s.vcenter_uuid AND v.t = s.t AND v.vm_moref = m.vm_moref
    JOIN dev d ON d.vcenter_uuid = s.vcenter_uuid AND d.t = s.t AND d.vm_moref = m.vm_moref
              AND (m.device_key IS NULL OR d.device_key = m.device_key)
)
SELECT m.gpu, k.known_from_ms,
       coalesce(sum(o.s1 - o.s0), 0) / 1000.0 AS on_seconds,
       min(o.s0) AS on_start_ms, max(o.s1) AS on_end_ms
FROM _presence_map m
JOIN known k ON k.vcenter_uuid = m.vcenter_uuid
LEFT JOIN on_seg o ON o.gpu = m.gpu
GROUP BY m.gpu, k.known_from_ms
"""


def inventory_presence(con: Any, gmap: pl.DataFrame, window: Window) -> pl.DataFrame:
    """Per mapped GPU: ``known_from_ms`` (where the inventory starts to know), ``on_seconds``
    and the first/last instant of powered-on-with-device time (``on_start_ms``/``on_end_ms``)."""
    empty = pl.DataFrame(schema={"gpu": pl.String, "known_from_ms": pl.Int64, "on_seconds": pl.Float64,
                                 "on_start_ms": pl.Int64, "on_end_ms": pl.Int64})
    m = gmap.filter(pl.col("vcenter_uuid").is_not_null() & pl.col("vm_moref").is_not_null())
    if m.height == 0:
        return empty
    dk = m["device_key"].cast(pl.Int64) if "device_key" in m.columns else pl.Series([None] * m.height, dtype=pl.Int64)
    m = m.select("gpu", "vcenter_uuid", "vm_moref").with_columns(device_key=dk).unique(subset=["gpu"], keep="first")
    con.register("_presence_map", m.to_arrow())
    try:
        out = frame(con, _INVENTORY_SQL, {"ws": window.start_ms, "we": window.end_ms})  # type: ignore[arg-type]
    finally:
        con.unregister("_presence_map")
    return out.cast({k: v for k, v in empty.schema.items()})


def agent_seen(con: Any, window: Window) -> pl.DataFrame:
    """First/last ``agent_gpu`` report of each GPU inside the window (the agent listed the GPU)."""
    return frame(con, """
        SELECT gpu_uuid AS gpu, min(epoch_ms(ts)) AS agent_first_ms, max(epoch_ms(ts)) AS agent_last_ms
        FROM agent_gpu WHERE epoch_ms(ts) BETWEEN $ws AND $we GROUP BY ALL
        """, {"ws": window.start_ms, "we": window.end_ms})  # type: ignore[arg-type]


def sample_span(gpus: pl.DataFrame) -> pl.DataFrame:
    """Presence from the samples alone: first to last sample (the fallback everywhere)."""
    return gpus.select(
        "gpu", presence_start_ms=pl.col("first_ms"), presence_end_ms=pl.col("last_ms"),
        presence_seconds=((pl.col("last_ms") - pl.col("first_ms")) / 1000.0).cast(pl.Float64),
        presence_source=pl.lit("samples"),
    )


def presence(con: Any, gpus: pl.DataFrame, gmap: pl.DataFrame, window: Window) -> pl.DataFrame:
    """``gpus``: gpu, first_ms, last_ms (from the samples). Returns :data:`PRESENCE_SCHEMA` per GPU."""
    if gpus.height == 0:
        return pl.DataFrame(schema=PRESENCE_SCHEMA)
    ws, we = window.start_ms, window.end_ms
    seen = gpus.select("gpu", "first_ms", "last_ms").join(agent_seen(con, window), on="gpu", how="left")
    seen = seen.select(
        "gpu",
        a=pl.max_horizontal(pl.min_horizontal("first_ms", "agent_first_ms"), pl.lit(ws)),
        b=pl.min_horizontal(pl.max_horizontal("last_ms", "agent_last_ms"), pl.lit(we)),
    )
    inv = inventory_presence(con, gmap, window)
    j = seen.join(inv, on="gpu", how="left")
    # the sample part: the span, cut where the inventory starts to know
    fb_end = pl.when(pl.col("known_from_ms").is_null()).then(pl.col("b")).otherwise(
        pl.min_horizontal("b", "known_from_ms"))
    j = j.with_columns(fb_end=fb_end).with_columns(
        fb_s=pl.max_horizontal((pl.col("fb_end") - pl.col("a")) / 1000.0, pl.lit(0.0)))
    has_fb = pl.col("fb_s") > 0
    inv_known = pl.col("known_from_ms").is_not_null()
    on_s = pl.col("on_seconds").fill_null(0.0)
    return j.select(
        "gpu",
        presence_start_ms=pl.when(~inv_known).then(pl.col("a")).otherwise(
            pl.min_horizontal(pl.when(has_fb).then(pl.col("a")), "on_start_ms")),
        presence_end_ms=pl.when(~inv_known).then(pl.col("b")).otherwise(
            pl.max_horizontal(pl.when(has_fb).then(pl.col("fb_end")), "on_end_ms")),
        presence_seconds=(on_s + pl.col("fb_s")).cast(pl.Float64),
        presence_source=pl.when(~inv_known).then(pl.lit("samples"))
        .when(has_fb).then(pl.lit("inventory+samples")).otherwise(pl.lit("inventory")),
    ).cast({"presence_start_ms": pl.Int64, "presence_end_ms": pl.Int64})


def mig_modes(con: Any) -> pl.DataFrame:
    """gpu → MIG enabled (bool), newest report per GPU.

    The one place MIG mode is looked up: today the guest agent's ``agent_gpu.mig_mode``; other
    sources' MIG mode (dcgm-exporter, nvidia_gpu_exporter) join here."""
    return frame(con, """
        SELECT gpu_uuid AS gpu, mig_mode FROM agent_gpu WHERE mig_mode IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY gpu_uuid ORDER BY ts DESC) = 1
        """)
