"""DuckDB views over the Parquet tables, and the small catalog file users open.

The catalog file ``<data-dir>/accelmon.duckdb`` holds views only (globs over the Parquet
files), so it never needs writing while the daemon runs: new files show up in the views on
the next query. The daemon (re)writes it at start-up for a few milliseconds; if a user holds
it open at that moment, the write is skipped - the views it already has stay valid.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from accelmon.store.schema import TABLES

if TYPE_CHECKING:
    from accelmon.store.writer import Store

log = logging.getLogger(__name__)

CATALOG_VERSION = 1

# name -> (doc, SQL). Raw tables are defined first under their own names.
VIEWS: dict[str, tuple[str, str]] = {
    "gpu_samples": (
        "gpu_sample in friendly units: seconds, watts, joules, utilization ratio.",
        """
        SELECT ts, gpu_uuid, source, vm_bios_uuid,
               util_percent, util_percent / 100.0 AS util_ratio, mem_util_percent,
               busy_ms_total / 1000.0 AS busy_seconds_total,
               idle_ms_total / 1000.0 AS idle_seconds_total,
               fb_used_bytes, fb_total_bytes, pcie_tx_bytes_total, pcie_rx_bytes_total,
               power_milliwatts / 1000.0 AS power_watts,
               energy_millijoules_total / 1000.0 AS energy_joules_total
        FROM gpu_sample
        """,
    ),
    "gpu_utilization_daily": (
        "Per GPU and UTC day: samples, mean and max utilization percent, mean framebuffer used, "
        "mean power (simple means of samples; see analytics for time-weighted figures).",
        """
        SELECT gpu_uuid, CAST(ts AS DATE) AS day, count(*) AS samples,
               avg(util_percent) AS mean_util_percent, max(util_percent) AS max_util_percent,
               avg(fb_used_bytes) AS mean_fb_used_bytes,
               avg(power_milliwatts) / 1000.0 AS mean_power_watts
        FROM gpu_sample GROUP BY ALL
        """,
    ),
    "hosts": (
        "Latest inventory snapshot of hosts per vCenter.",
        """
        SELECT * EXCLUDE (date) FROM inv_host
        QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)
        """,
    ),
    "host_gpus": (
        "Latest snapshot of host PCI GPUs with their NUMA node.",
        """
        SELECT * EXCLUDE (date) FROM inv_host_pci
        QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)
        """,
    ),
    "vms": (
        "Latest inventory snapshot of GPU VMs per vCenter.",
        """
        SELECT * EXCLUDE (date) FROM inv_vm
        QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)
        """,
    ),
    "vm_gpu": (
        "Current VM ↔ GPU device assignments with VM name, host, cluster, profile and host NUMA node.",
        """
        SELECT g.vcenter_uuid, g.vm_moref, v.vm_name, v.vm_instance_uuid, v.vm_bios_uuid,
               v.host_moref, h.host_name, v.cluster_name, g.device_key, g.backing, g.host_pci_id,
               g.vgpu_profile, g.vgpu_fb_bytes, g.host_numa_node, v.numa_node_affinity, v.num_cpu
        FROM inv_vm_gpu g
        JOIN vms v USING (vcenter_uuid, vm_moref)
        LEFT JOIN hosts h ON h.vcenter_uuid = v.vcenter_uuid AND h.host_moref = v.host_moref
        QUALIFY g.snapshot_ts = max(g.snapshot_ts) OVER (PARTITION BY g.vcenter_uuid)
        """,
    ),
    "vm_power": (
        "Per-VM power samples with the VM name.",
        """
        SELECT p.ts, p.vcenter_uuid, p.vm_moref, v.vm_name, p.power_watts, p.energy_joules
        FROM vm_power_sample p LEFT JOIN vms v USING (vcenter_uuid, vm_moref)
        """,
    ),
    "latest_findings": (
        "Findings of the most recent analytics run.",
        """
        SELECT * EXCLUDE (date) FROM findings
        WHERE run_id = (SELECT arg_max(run_id, generated_at) FROM findings)
        """,
    ),
}


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def view_statements(store: Store) -> list[str]:
    stmts = []
    for name in TABLES:
        stmts.append(
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet("
            f"{_q(store.table_glob(name))}, hive_partitioning = true, union_by_name = true)"
        )
    for name, (_doc, sql) in VIEWS.items():
        stmts.append(f"CREATE OR REPLACE VIEW {name} AS {sql.strip()}")
    return stmts


def define_views(con: Any, store: Store) -> None:
    for s in view_statements(store):
        con.execute(s)


def write_catalog(store: Store) -> bool:
    import duckdb

    try:
        con = duckdb.connect(str(store.catalog_path))
    except duckdb.Error as e:
        msg = str(e).lower()
        if "lock" in msg or "different configuration" in msg:
            log.info("catalog %s is held open by another process; keeping its views", store.catalog_path)
            return False
        raise
    try:
        con.execute("BEGIN")
        define_views(con, store)
        con.execute("CREATE OR REPLACE TABLE accelmon_meta (key VARCHAR, value VARCHAR)")
        con.execute(
            "INSERT INTO accelmon_meta VALUES ('catalog_version', ?), ('data_dir', ?)",
            [str(CATALOG_VERSION), str(store.root)],
        )
        con.execute("COMMIT")
    finally:
        con.close()
    return True
