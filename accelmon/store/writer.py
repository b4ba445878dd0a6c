"""Append-only, crash-safe Parquet store with hive partitions and atomic compaction.

Layout under the data dir (see docs/store.md for why)::

    accelmon.duckdb                                   catalog: views only, opened for milliseconds
    tables/<table>/shard=<s>/date=YYYY-MM-DD  -> symlink to the partition's current generation
    .gen/<table>/shard=<s>/date=YYYY-MM-DD/g000001/part-….parquet
    .gen/<table>/shard=<s>/.append.lock, .compact.lock   flock(2) files (the shard's writer host only)
    shards/<s>.json                                   which host writes shard <s> (store/shards.py)

* Each writer appends, compacts, retains and garbage-collects only its own shard; readers see
  the union of all shards (``partitions``/``files`` and the views cover every shard).

* An append writes ``.tmp-…`` in the partition's current generation directory, fsyncs it,
  renames it to ``part-….parquet`` and fsyncs the directory before returning: a returned
  append survives ``kill -9`` and power loss, and readers (who glob ``*.parquet``) never see a
  partial file.
* Compaction reads a generation's files (immutable), writes one sorted file into a new
  generation directory, then - under an exclusive lock that appenders share - hard-links any
  file that arrived meanwhile and atomically swaps the partition symlink.  A reader sees the
  old generation or the new one, never both, never neither.  Old generations are deleted by
  :meth:`Store.gc` after a grace period, so a query that globbed the old files can finish.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from accelmon.store import catalog, check, shards
from accelmon.store.compaction import CompactionFailure, CompactionResult, compact, replace_partition
from accelmon.store.fsutil import fsync_dir
from accelmon.store.layout import EPOCH_PARTITION, GEN_RE, Layout, StoreError
from accelmon.store.rows import to_arrow, write_parquet
from accelmon.store.schema import TABLES, table

# re-exported: the store's public names (and the older import paths of the layout's)
__all__ = ["EPOCH_PARTITION", "GEN_RE", "Store", "StoreError", "to_arrow", "write_parquet"]

log = logging.getLogger(__name__)


class Store(Layout):
    """The data dir. Thread-safe; several processes may append concurrently.

    ``shard`` names the part of the data dir this process writes (default: derived from the host
    name, see :func:`accelmon.store.shards.derive`); reading always covers every shard."""

    def __init__(self, data_dir: str | os.PathLike[str], *, gc_grace_seconds: float = 600.0,
                 read_only_ok: bool = False, shard: str | None = None) -> None:
        """Open (and create) the data dir. With ``read_only_ok``, a data dir this process cannot
        write (read-only mount, no permission) opens for reading: ``writable`` is then False."""
        super().__init__(data_dir, gc_grace_seconds=gc_grace_seconds, shard=shard)
        self._init_layout(read_only_ok)

    # ------------------------------------------------------------------ layout
    def _init_layout(self, read_only_ok: bool = False) -> None:
        try:
            (self.root / "tables").mkdir(parents=True, exist_ok=True)
            (self.root / ".gen").mkdir(exist_ok=True)
            writable = os.access(self.root, os.W_OK)
            err = "data dir is not writable"
        except OSError as e:
            writable, err = False, f"cannot create data dir: {e.strerror}"
        if not writable:
            if read_only_ok and (self.root / "tables").is_dir():
                self.writable = False
                return
            raise StoreError(f"{self.root}: {err}") from None
        if any(shards.legacy_partitions(self.root, t) for t in TABLES):
            self.prepare_writer()  # an unsharded store: move it into this shard now (docs/store.md)

    def append(self, name: str, rows: Any) -> int:
        """Durably append rows to a table. Returns the number of rows written.

        When this returns, the rows are on disk (fsync) and visible to new queries."""
        t = table(name)
        data = to_arrow(t, rows)
        if data.num_rows == 0:
            return 0
        ms = np.asarray(data.column(t.partition_ts).cast(pa.int64()).to_numpy(), dtype=np.int64)
        day_no = ms // 86_400_000
        uniq = np.unique(day_no)
        for d in uniq:
            day = (dt.date(1970, 1, 1) + dt.timedelta(days=int(d))).isoformat()
            part = data if len(uniq) == 1 else data.filter(pa.array(day_no == d))
            self._append_partition(t, day, part)
        return int(data.num_rows)

    def compact(
        self,
        tables: Sequence[str] | None = None,
        *,
        min_files: int = 2,
        partitions: Iterable[str] | None = None,
        failures: list[CompactionFailure] | None = None,
    ) -> list[CompactionResult]:
        """Merge each partition's files into one sorted file (accelmon/store/compaction.py)."""
        return compact(self, tables, min_files=min_files, partitions=partitions, failures=failures)

    def replace_partition(self, name: str, partition: str, data: Any) -> Path:
        """Replace a derived table's day partition with ``data`` as a new generation (rollups;
        accelmon/store/compaction.py)."""
        return replace_partition(self, name, partition, data)

    # ------------------------------------------------------------------ housekeeping
    def gc(self, now: float | None = None) -> int:
        """Delete this shard's retired generations and stale temp files older than the grace period."""
        self.prepare_writer()
        now = time.time() if now is None else now
        removed = 0
        for tmp in self.root.glob(".tmp-catalog-*"):  # a catalog write that was killed
            if now - tmp.lstat().st_mtime > self.gc_grace_seconds:
                tmp.unlink(missing_ok=True)
        for t in TABLES:
            root = self.gen_root(t)
            if not root.exists():
                continue
            for pdir in root.glob("date=*"):
                link = self.link_path(t, pdir.name.split("=", 1)[1])
                current = link.resolve() if link.is_symlink() else None
                for gen in pdir.iterdir():
                    if not gen.is_dir() or gen == current:
                        if gen == current:
                            for tmp in gen.glob(".tmp-*"):
                                if now - tmp.stat().st_mtime > self.gc_grace_seconds:
                                    tmp.unlink(missing_ok=True)
                        continue
                    age = now - gen.stat().st_mtime
                    if age > self.gc_grace_seconds:
                        shutil.rmtree(gen, ignore_errors=True)
                        removed += 1
                if current is None and not link.exists() and not any(pdir.iterdir()):
                    pdir.rmdir()
        return removed

    def drop_partitions_before(self, name: str, day: dt.date) -> list[str]:
        """Retention: unlink this shard's whole partitions older than ``day`` (data removed after gc grace)."""
        self.prepare_writer()
        dropped = []
        for p in self.own_partitions(name):
            if p == EPOCH_PARTITION:
                continue
            if dt.date.fromisoformat(p) < day:
                link = self.link_path(name, p)
                target = link.resolve()
                link.unlink()
                fsync_dir(link.parent)
                (target / ".retired").write_text(str(time.time()))
                dropped.append(p)
        return dropped

    # ------------------------------------------------------------------ reading
    def connect(self, *, threads: int | None = None) -> Any:
        """An in-memory DuckDB connection with every table and view defined.

        Never touches the catalog file, so it works while a user holds the catalog open."""
        con = duckdb.connect(":memory:")
        if threads:
            con.execute(f"SET threads={int(threads)}")
        catalog.define_views(con, self)
        return con

    def define_views(self, con: Any) -> list[Path]:
        """Define every table and view on a DuckDB connection; returns unreadable files left out."""
        return catalog.define_views(con, self)

    def ensure_catalog(self) -> bool:
        """(Re)write the catalog file's views. Returns False when another process holds it."""
        self.prepare_writer()  # this shard's epoch files: the catalog's globs must match a file
        return catalog.write_catalog(self)

    def repair(self, result: check.CheckResult | None = None) -> check.RepairResult:
        """``accelmon store check --repair``: quarantine unreadable files, remove leftovers of a
        kill, rebuild the catalog (store/check.py finds them)."""
        out = check.repair_files(self, result)
        out.catalog_written = self.ensure_catalog()
        return out
