"""Power: per VM, host and GPU energy over the window, and the idle share.

* VM/host energy: Σ ``energy_joules`` of the realtime samples whose interval ends in the
  window (``power.energy.summation``); where a row has no energy, ``power_watts ×
  interval_seconds``. Mean power = energy / (Σ interval_seconds).
* GPU energy and idle energy come from :mod:`accelmon.analytics.utilization` (energy counter
  increase, else held power × covered time); ``idle_energy_share`` = idle / total.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from accelmon.analytics.db import frame
from accelmon.analytics.window import Window

_E = "coalesce(energy_joules, power_watts * interval_seconds)"


def power(con: Any, window: Window, gpus: pl.DataFrame) -> dict[str, pl.DataFrame]:
    args = [window.start, window.end]
    vm = frame(con,
        f"""
        SELECT p.vcenter_uuid, p.vm_moref, any_value(v.vm_name) AS vm_name, any_value(v.host_moref) AS host_moref,
               count(*) AS samples, sum({_E}) AS energy_joules, sum(interval_seconds) AS seconds,
               sum({_E}) / nullif(sum(interval_seconds), 0) AS mean_watts
        FROM vm_power_sample p LEFT JOIN vms v USING (vcenter_uuid, vm_moref)
        WHERE p.ts >= ? AND p.ts <= ? GROUP BY ALL
        ORDER BY round(sum({_E}), 3) DESC NULLS LAST, p.vcenter_uuid, p.vm_moref  -- ties: a stable order
        """,
        args,
    )
    host = frame(con,
        f"""
        SELECT p.vcenter_uuid, p.host_moref, any_value(h.host_name) AS host_name, any_value(h.cluster_name) AS cluster_name,
               count(*) AS samples, sum({_E}) AS energy_joules, sum(interval_seconds) AS seconds,
               sum({_E}) / nullif(sum(interval_seconds), 0) AS mean_watts
        FROM host_power_sample p LEFT JOIN hosts h USING (vcenter_uuid, host_moref)
        WHERE p.ts >= ? AND p.ts <= ? GROUP BY ALL
        ORDER BY round(sum({_E}), 3) DESC NULLS LAST, p.vcenter_uuid, p.host_moref  -- ties: a stable order
        """,
        args,
    )
    g = gpus.select(
        "gpu", "energy_joules", "idle_energy_joules", "energy_kwh", "idle_energy_kwh", "mean_power_watts",
        "idle_power_watts",
        idle_energy_share=pl.when(pl.col("energy_joules") > 0).then(pl.col("idle_energy_joules") / pl.col("energy_joules")),
    ).sort(pl.col("idle_energy_joules").round(3), "gpu", descending=[True, False], nulls_last=True)
    for df_name in ("vm", "host"):
        df = vm if df_name == "vm" else host
        df = df.with_columns(energy_kwh=pl.col("energy_joules") / 3.6e6)
        if df_name == "vm":
            vm = df
        else:
            host = df
    return {"vms": vm, "hosts": host, "gpus": g}
