"""Checking and repairing a store: unreadable Parquet files and leftovers of a kill.

* A **bad file** is a visible ``*.parquet`` file of a partition's current generation that
  pyarrow cannot open (no footer: truncated, zeroed) or - in a deep check - whose row groups
  cannot be decoded. DuckDB reads every file's footer when a view is bound, so one such file
  would stop every query of every table; it is reported once by name and **quarantined**: moved
  to ``<data-dir>/quarantine/<its path under the data dir as readers see it>`` (e.g.
  ``quarantine/tables/gpu_sample/shard=vc-a/date=2026-11-26/part-….parquet``), never deleted.
* A **leftover link** is a ``tables/<table>/shard=<s>/.tmp-link-*`` symlink of a partition swap
  that a kill interrupted between ``symlink`` and ``rename``; it is removed.

``accelmon store check`` lists both over every shard (exit 1 when there is any), ``--repair``
fixes those of its own shard only (another shard's files belong to its writer host) and rebuilds
the catalog. The daemon quarantines a bad file of its shard the first time a view fails on it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from accelmon.store.errors import StoreError
from accelmon.store.fsutil import fsync_dir
from accelmon.store.layout import Layout, leftover_links, remove_leftover_links
from accelmon.store.schema import TABLES

log = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"
_reported: set[Path] = set()
_reported_lock = threading.Lock()


@dataclass(frozen=True)
class BadFile:
    table: str
    partition: str
    path: Path  # the file in its generation directory
    reason: str
    shard: str = ""

    def shown(self, store: Layout) -> Path:
        """The path as readers see it: ``<data-dir>/tables/<table>/shard=<s>/date=<day>/<name>``."""
        return store.link_path(self.table, self.partition, self.shard or None) / self.path.name


@dataclass
class CheckResult:
    bad_files: list[BadFile] = field(default_factory=list)
    leftover_links: list[Path] = field(default_factory=list)
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.bad_files and not self.leftover_links


@dataclass
class RepairResult:
    quarantined: list[Path] = field(default_factory=list)  # where each bad file went
    links_removed: list[Path] = field(default_factory=list)
    catalog_written: bool = False
    not_own: list[BadFile] = field(default_factory=list)  # bad files of other shards, left alone


def file_problem(path: Path, *, deep: bool) -> str | None:
    """None when the Parquet file opens (and, if ``deep``, every row group decodes), else why not."""
    try:
        pf = pq.ParquetFile(path)
        if deep:
            for i in range(pf.num_row_groups):
                pf.read_row_group(i)
    except (pa.ArrowException, OSError, ValueError) as e:
        return " ".join(str(e).split())[:200] or type(e).__name__
    return None


def find_bad_files(store: Layout, tables: list[str] | None = None, *, deep: bool = False) -> list[BadFile]:
    out: list[BadFile] = []
    for name in tables or list(TABLES):
        for shard in store.shards(name):
            for part in store.own_partitions(name, shard):
                for f in store.own_files(name, part, shard):
                    why = file_problem(f, deep=deep)
                    if why is not None:
                        out.append(BadFile(name, part, f, why, shard))
    return out


def check(store: Layout, *, deep: bool = True) -> CheckResult:
    """Every shard's files and leftovers (reading is safe whoever writes them)."""
    res = CheckResult(leftover_links=leftover_links(store))
    for name in TABLES:
        for shard in store.shards(name):
            for part in store.own_partitions(name, shard):
                for f in store.own_files(name, part, shard):
                    res.files_checked += 1
                    why = file_problem(f, deep=deep)
                    if why is not None:
                        res.bad_files.append(BadFile(name, part, f, why, shard))
    return res


def report_bad(store: Layout, bad: list[BadFile]) -> None:
    """Log each bad file once per process, by the name readers see."""
    for b in bad:
        with _reported_lock:
            if b.path in _reported:
                continue
            _reported.add(b.path)
        log.warning("%s: unreadable Parquet file (%s); left out of queries - `accelmon store check --repair` "
                    "moves it to %s", b.shown(store), b.reason, store.root / QUARANTINE_DIR)


def quarantine(store: Layout, bad: BadFile) -> Path:
    """Move a bad file of this store's shard out of its generation to
    ``quarantine/tables/<table>/shard=<s>/date=<day>/<name>``.

    Under the table's compaction lock, so no compaction is reading it; appends are unaffected.
    A rename within the data dir: the bytes are kept for inspection, nothing is deleted.
    Another shard's file is never moved (its writer host does that): StoreError."""
    if bad.shard and bad.shard != store.shard:
        raise StoreError(f"{bad.shown(store)}: belongs to shard {bad.shard}; repair it from that shard's "
                         f"writer (accelmon store check --repair with [store] shard = \"{bad.shard}\")")
    dest = store.root / QUARANTINE_DIR / bad.shown(store).relative_to(store.root)
    with store._flock(bad.table, "compact", fcntl.LOCK_EX):
        if not bad.path.exists():
            return dest  # moved already (another process)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            dest = dest.with_name(f"{dest.stem}.{os.getpid()}{dest.suffix}")
        os.rename(bad.path, dest)
        fsync_dir(bad.path.parent)
        fsync_dir(dest.parent)
    log.warning("%s: unreadable Parquet file (%s) moved to %s", bad.shown(store), bad.reason, dest)
    store.ensure_epoch_files([bad.table])
    return dest




def repair_files(store: Layout, result: CheckResult | None = None) -> RepairResult:
    """Quarantine the unreadable files and remove the leftovers; the catalog is rebuilt by the
    caller (:meth:`accelmon.store.writer.Store.repair`)."""
    result = result if result is not None else check(store)
    store.prepare_writer()
    out = RepairResult(links_removed=remove_leftover_links(store))
    for b in result.bad_files:
        if b.shard and b.shard != store.shard:
            out.not_own.append(b)  # another host's shard: reported, never touched
            continue
        out.quarantined.append(quarantine(store, b))
    return out

