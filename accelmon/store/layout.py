"""The data dir's layout: shards, partitions, generations, locks and the atomic partition swap
(docs/store.md). The writer (:mod:`accelmon.store.writer`), compaction, the catalog and the
checks work on this; none of them imports the writer.

    tables/<table>/shard=<s>/date=YYYY-MM-DD  -> symlink to the partition's current generation
    .gen/<table>/shard=<s>/date=YYYY-MM-DD/g000001/part-….parquet
    .gen/<table>/shard=<s>/.append.lock, .compact.lock   flock(2) files (the shard's writer host only)
    shards/<s>.json                                   which host writes shard <s> (store/shards.py)

Each writer appends, compacts, retains and garbage-collects only its own shard; readers see the
union of all shards (``partitions``/``files`` and the views cover every shard).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

from accelmon.store import shards as shardmod
from accelmon.store.errors import StoreError
from accelmon.store.fsutil import fsync_dir
from accelmon.store.rows import write_parquet
from accelmon.store.schema import TABLES, Table, table

__all__ = ["EPOCH_PARTITION", "GEN_RE", "Layout", "StoreError", "leftover_links", "remove_leftover_links"]

log = logging.getLogger("accelmon.store.writer")

EPOCH_PARTITION = "1970-01-01"  # holds one empty file per table so views always resolve
GEN_RE = re.compile(r"^g(\d{6,})$")
_counter = itertools.count()


class Layout:
    """The data dir's files: where each table's partitions and generations are (per shard), and
    the locked, crash-safe steps that change them (one file appended, one symlink swapped).

    ``shard`` names the part of the data dir this process writes (default: derived from the host
    name, see :func:`accelmon.store.shards.derive`); reading always covers every shard."""

    def __init__(self, data_dir: str | os.PathLike[str], *, gc_grace_seconds: float = 600.0,
                 shard: str | None = None) -> None:
        self.root = Path(data_dir).absolute()
        try:
            self.shard = shardmod.validate(shard) if shard is not None else shardmod.derive()
        except ValueError as e:
            raise StoreError(f"{self.root}: shard: {e}") from None
        self.gc_grace_seconds = gc_grace_seconds
        self.writable = True
        # the daemon sets this: a file a view cannot read is moved to quarantine/ (store/check.py)
        self.quarantine_bad_files = False
        self._tlock = threading.Lock()
        self._writer_ready = False

    def prepare_writer(self) -> None:
        """Before this process first writes its shard: claim the shard for this host, move an
        unsharded store into it, remove leftovers of a killed partition swap, and give every
        table its (empty) epoch file so the views resolve. Idempotent; readers never call it."""
        if self._writer_ready:
            return
        with self._tlock:
            if not self._writer_ready:  # another thread may have done it while this one waited
                self._prepare_writer_locked()
        self.ensure_epoch_files()

    def _prepare_writer_locked(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.root}: data dir is not writable")
        shardmod.claim(self)
        for name in TABLES:
            if shardmod.legacy_partitions(self.root, name):
                with self._flock(name, "compact", fcntl.LOCK_EX), self._flock(name, "append", fcntl.LOCK_EX):
                    n = shardmod.migrate_legacy(self, name)
                log.info("%s: moved %d partition(s) of the unsharded layout into shard %s", name, n, self.shard)
        for link in remove_leftover_links(self):  # a kill inside a partition swap (docs/store.md)
            log.warning("%s: removed the leftover of an interrupted partition swap", link)
        self._writer_ready = True

    def ensure_epoch_files(self, tables: Iterable[str] | None = None) -> None:
        """Every table keeps one (empty) file in the 1970-01-01 partition of this shard, so its view
        resolves."""
        for name in tables or list(TABLES):
            t = table(name)
            gen = self._current_gen(t.name, EPOCH_PARTITION, create=False)
            if gen is None or not gen.is_dir() or not any(gen.glob("*.parquet")):
                self._append_partition(t, EPOCH_PARTITION, t.schema.empty_table())

    def table_glob(self, name: str) -> str:
        """Every shard's partitions; a store still in the unsharded layout (read-only, not yet
        migrated by a writer) is read as it is."""
        if not self.shards(name) and shardmod.legacy_partitions(self.root, name):
            return str(self.root / "tables" / name / "date=*" / "*.parquet")
        return str(self.root / "tables" / name / "shard=*" / "date=*" / "*.parquet")

    def shards(self, name: str | None = None) -> list[str]:
        """The shards present (of one table, or of any)."""
        names = [name] if name else list(TABLES)
        out: set[str] = set()
        for n in names:
            d = self.root / "tables" / n
            if d.is_dir():
                out.update(p.name.split("=", 1)[1] for p in d.iterdir() if p.name.startswith("shard="))
        return sorted(out)

    def gen_root(self, tname: str, shard: str | None = None) -> Path:
        return self.root / ".gen" / tname / f"shard={shard or self.shard}"

    def link_path(self, tname: str, partition: str, shard: str | None = None) -> Path:
        """The partition link readers glob: ``tables/<t>/shard=<s>/date=<day>``."""
        return self.root / "tables" / tname / f"shard={shard or self.shard}" / f"date={partition}"

    @contextmanager
    def _flock(self, tname: str, which: str, mode: int) -> Iterator[None]:
        """A lock of this shard only: all its takers run on the shard's one writer host."""
        d = self.gen_root(tname)
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / f".{which}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _current_gen(self, tname: str, partition: str, create: bool, shard: str | None = None) -> Path | None:
        link = self.link_path(tname, partition, shard)
        if link.is_symlink():
            gen = link.resolve()
            if create and not gen.is_dir():  # its generation was removed by hand: start it again
                gen.mkdir(parents=True, exist_ok=True)
            return gen
        if not create:
            return None
        gen = self.gen_root(tname) / f"date={partition}" / "g000001"
        gen.mkdir(parents=True, exist_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        self._swap_link(link, gen)
        return gen

    def _swap_link(self, link: Path, target: Path) -> None:
        rel = os.path.relpath(target, link.parent)
        tmp = link.parent / f".tmp-link-{uuid.uuid4().hex}"
        os.symlink(rel, tmp)
        os.replace(tmp, link)
        fsync_dir(link.parent)

    def _append_partition(self, t: Table, day: str, data: pa.Table) -> Path:
        self.prepare_writer()
        with self._flock(t.name, "append", fcntl.LOCK_SH):
            gen = self._current_gen(t.name, day, create=True)
            assert gen is not None
            stem = f"part-{time.time_ns() // 1_000_000:013d}-{os.getpid()}-{next(_counter):06d}-{uuid.uuid4().hex[:8]}"
            tmp = gen / f".tmp-{stem}"
            final = gen / f"{stem}.parquet"
            try:
                with open(tmp, "wb") as f:
                    write_parquet(t, data, f, level=1)  # compaction rewrites it compactly
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:
                tmp.unlink(missing_ok=True)  # e.g. disk full: leave nothing behind
                raise
            os.rename(tmp, final)
            fsync_dir(gen)
        return final

    def partitions(self, name: str) -> list[str]:
        """The days of a table, over every shard (for readers)."""
        days: set[str] = set()
        for s in self.shards(name):
            days.update(self.own_partitions(name, s))
        return sorted(days)

    def own_partitions(self, name: str, shard: str | None = None) -> list[str]:
        """The days of a table in this shard (or in ``shard``): what compaction and retention touch."""
        d = self.root / "tables" / name / f"shard={shard or self.shard}"
        if not d.exists():
            return []
        return sorted(p.name.split("=", 1)[1] for p in d.iterdir() if p.name.startswith("date="))

    def files(self, name: str, partition: str | None = None) -> list[Path]:
        """The visible Parquet files of a table (one day, or all), over every shard (for readers)."""
        return [f for s in self.shards(name) for f in self.own_files(name, partition, s)]

    def own_files(self, name: str, partition: str | None = None, shard: str | None = None) -> list[Path]:
        """The visible Parquet files of this shard (or of ``shard``)."""
        parts = [partition] if partition else self.own_partitions(name, shard)
        out: list[Path] = []
        for p in parts:
            gen = self._current_gen(name, p, create=False, shard=shard)
            if gen is not None and gen.exists():
                out += sorted(gen.glob("*.parquet"))
        return out

    def disk_bytes(self, name: str | None = None) -> int:
        names = [name] if name else list(TABLES)
        return sum(f.stat().st_size for n in names for f in self.files(n))

    @property
    def catalog_path(self) -> Path:
        return self.root / "accelmon.duckdb"


def leftover_links(store: Layout, *, own: bool = False) -> list[Path]:
    """``.tmp-link-*`` of interrupted swaps, in every shard (or only in this one)."""
    out: list[Path] = []
    tables = store.root / "tables"
    if not tables.is_dir():
        return out
    pattern = f"shard={store.shard}" if own else "shard=*"
    for tdir in sorted(p for p in tables.iterdir() if p.is_dir()):
        out += sorted(tdir.glob(".tmp-link-*"))  # the unsharded layout's
        out += sorted(tdir.glob(f"{pattern}/.tmp-link-*"))
    return out


def remove_leftover_links(store: Layout) -> list[Path]:
    """Remove ``.tmp-link-*`` of interrupted partition swaps, under each table's append lock taken
    exclusively (appenders hold it shared and compaction's swap exclusively, so no swap is in flight)."""
    removed: list[Path] = []
    for link in leftover_links(store, own=True):
        tname = link.parent.name if not link.parent.name.startswith("shard=") else link.parent.parent.name
        with store._flock(tname, "append", fcntl.LOCK_EX):
            if link.is_symlink() or link.exists():
                link.unlink()
                fsync_dir(link.parent)
                removed.append(link)
    return removed
