"""The store's views: data (name -> description, SQL over the tables of
:mod:`accelmon.store.schema`), defined on every connection and in the catalog file by
:mod:`accelmon.store.catalog` and listed in docs/schema.md."""

from __future__ import annotations

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
        SELECT * EXCLUDE (date, shard) FROM inv_host
        QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)
        """,
    ),
    "host_gpus": (
        "Latest snapshot of host PCI GPUs with their NUMA node.",
        """
        SELECT * EXCLUDE (date, shard) FROM inv_host_pci
        QUALIFY snapshot_ts = max(snapshot_ts) OVER (PARTITION BY vcenter_uuid)
        """,
    ),
    "vms": (
        "Latest inventory snapshot of GPU VMs per vCenter.",
        """
        SELECT * EXCLUDE (date, shard) FROM inv_vm
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
    "latest_vm_owner": (
        "The current owner of each VM: its latest vm_owner row (docs/owners.md).",
        """
        SELECT * EXCLUDE (date) FROM vm_owner
        QUALIFY row_number() OVER (PARTITION BY vcenter_uuid, vm_moref ORDER BY snapshot_ts DESC) = 1
        """,
    ),
    "latest_findings": (
        "Findings of the most recent analytics run.",
        """
        SELECT * EXCLUDE (date, shard) FROM findings
        WHERE run_id = (SELECT arg_max(run_id, generated_at) FROM findings)
        """,
    ),
}
