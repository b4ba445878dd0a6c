"""DuckDB views over the Parquet tables, and the small catalog file users open.

The catalog file ``<data-dir>/accelmon.duckdb`` holds views only (globs over the Parquet
files), so it never needs writing while the daemon runs: new files show up in the views on
the next query. The daemon (re)writes it at start-up for a few milliseconds; if a user holds
it open at that moment, the write is skipped - the views it already has stay valid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from accelmon.store.schema import TABLES

if TYPE_CHECKING:
    from accelmon.store.writer import Store

log = logging.getLogger(__name__)

CATALOG_VERSION = 1
# Storage format of the catalog file: v1.0.0 is readable by DuckDB CLIs from 1.0 on (a 2.x
# default-format file is not); the file holds views only, which need nothing newer.
CATALOG_STORAGE_VERSION = "v1.0.0"

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


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _duck_type(typ: pa.DataType) -> str:
    if pa.types.is_list(typ):
        return _duck_type(typ.value_type) + "[]"
    if pa.types.is_timestamp(typ):
        return "TIMESTAMP WITH TIME ZONE" if typ.tz else "TIMESTAMP"
    return _DUCK_TYPES[str(typ)]


_DUCK_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "int32": "INTEGER", "int16": "SMALLINT",
               "float": "FLOAT", "double": "DOUBLE", "bool": "BOOLEAN"}


def table_view_sql(store: Store, name: str, files: list[Path] | None = None) -> str:
    """The raw table's view: all of its partitions in every shard (``shard=*/date=*`` only, so a
    stray entry such as a ``.tmp-link-*`` left by a kill never reaches the reader), or exactly
    ``files``; a typed empty relation when ``files`` is empty. The hive keys become the columns
    ``date`` (DATE) and ``shard`` (VARCHAR, typed explicitly: a shard named ``2024`` must not turn
    the column into a number)."""
    if files is None:
        src = _q(store.table_glob(name))
    elif files:
        src = "[" + ", ".join(_q(str(f)) for f in files) + "]"
    else:
        t = TABLES[name]
        cols = ", ".join(f"CAST(NULL AS {_duck_type(c.type)}) AS {c.name}" for c in t.columns)
        return (f"CREATE OR REPLACE VIEW {name} AS SELECT {cols}, CAST(NULL AS DATE) AS date, "
                "CAST(NULL AS VARCHAR) AS shard WHERE false")
    legacy = "shard=" not in src  # a store still in the unsharded layout (read-only): no shard key
    hive = "{'date': DATE}" if legacy else "{'date': DATE, 'shard': VARCHAR}"
    extra = ", CAST(NULL AS VARCHAR) AS shard" if legacy else ""
    return (f"CREATE OR REPLACE VIEW {name} AS SELECT *{extra} FROM read_parquet("
            f"{src}, hive_partitioning = true, hive_types = {hive}, union_by_name = true)")


def view_statements(store: Store) -> list[str]:
    stmts = [table_view_sql(store, name) for name in TABLES]
    for name, (_doc, sql) in VIEWS.items():
        stmts.append(f"CREATE OR REPLACE VIEW {name} AS {sql.strip()}")
    return stmts


def define_views(con: Any, store: Store) -> list[Path]:
    """Define every table and view on ``con``. A table whose files cannot all be read does not
    stop the others: its unreadable files are found (Parquet footer check), reported once by
    name, quarantined when the store is set to (the daemon), else left out of this
    connection's view. Returns the files left out."""
    import duckdb

    from accelmon.store import check

    left_out: list[Path] = []
    for name in TABLES:
        try:
            con.execute(table_view_sql(store, name))
            continue
        except duckdb.Error:
            bad = check.find_bad_files(store, [name], deep=False)
            if not bad and not store.files(name):  # no file at all (e.g. a read-only copy without them)
                con.execute(table_view_sql(store, name, []))
                continue
            if not bad:
                raise
        own = [b for b in bad if b.shard in ("", store.shard)]  # never another host's shard
        if store.quarantine_bad_files and store.writable and own:
            for b in own:
                check.quarantine(store, b)
            with contextlib.suppress(duckdb.Error):
                con.execute(table_view_sql(store, name))
                continue
            bad = check.find_bad_files(store, [name], deep=False)
        check.report_bad(store, bad)
        skip = {b.path for b in bad}
        left_out += sorted(skip)
        good = [f for f in store.files(name) if f not in skip]
        con.execute(table_view_sql(store, name, good))
    for name, (_doc, sql) in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql.strip()}")
    return left_out


def write_catalog(store: Store) -> bool:
    """Write the catalog file: views only, in an older storage format, atomically.

    Written to a temp file and renamed over ``accelmon.duckdb``, so a crash leaves the old
    catalog or the new one, never a broken one. Skipped (returns False) while another process
    holds the file open - its views stay valid."""
    import duckdb

    path = store.catalog_path
    if path.exists():
        try:
            duckdb.connect(str(path)).close()  # probe: does another process hold it?
        except duckdb.Error as e:
            msg = str(e).lower()
            if "lock" in msg or "different configuration" in msg:
                log.info("catalog %s is held open by another process; keeping its views", path)
                return False
            log.warning("catalog %s: unreadable (%s); writing a new one", path, str(e).splitlines()[0])
    tmp = path.with_name(f".tmp-catalog-{uuid.uuid4().hex}.duckdb")
    con = duckdb.connect(":memory:")
    try:
        # DuckDB (PR duckdb/duckdb#15794): "the storage version is instead specified on ATTACH ...
        # we can target the storage version towards the desired supported version when creating a
        # new database"; an existing file keeps its own version, hence a fresh file every time.
        # v1.0.0 (header version 64) opens in every DuckDB >= 1.0; a 2.x default file does not.
        con.execute(f"ATTACH {_q(str(tmp))} AS accelmon_catalog (STORAGE_VERSION {_q(CATALOG_STORAGE_VERSION)})")
        con.execute("USE accelmon_catalog")
        define_views(con, store)
        con.execute("CREATE OR REPLACE TABLE accelmon_meta (key VARCHAR, value VARCHAR)")
        con.execute(
            "INSERT INTO accelmon_meta VALUES ('catalog_version', ?), ('data_dir', ?), ('storage_version', ?)",
            [str(CATALOG_VERSION), str(store.root), CATALOG_STORAGE_VERSION],
        )
        con.execute("USE memory")
        con.execute("DETACH accelmon_catalog")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        con.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)  # a WAL of the replaced file
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


def catalog_storage_version(path: Path) -> int:
    """The storage version number in a DuckDB file's main header ("DUCK" magic at byte 8, then
    the little-endian uint64 version): 64 = v1.0.0 (readable by DuckDB >= 1.0)."""
    with open(path, "rb") as f:
        head = f.read(20)
    if head[8:12] != b"DUCK":
        raise ValueError(f"{path}: not a DuckDB database file")
    return int.from_bytes(head[12:20], "little")
