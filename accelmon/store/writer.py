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
import fcntl
import itertools
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from accelmon.store import shards
from accelmon.store.fsutil import fsync_dir
from accelmon.store.schema import TABLES, Table, table

if TYPE_CHECKING:
    from accelmon.store.compaction import CompactionFailure, CompactionResult

log = logging.getLogger(__name__)

EPOCH_PARTITION = "1970-01-01"  # holds one empty file per table so views always resolve
_GEN_RE = re.compile(r"^g(\d{6,})$")
_counter = itertools.count()


class StoreError(Exception):
    """A problem with the data dir that the user must fix (one line, names the path)."""


def to_arrow(t: Table, rows: Any) -> pa.Table:
    """Coerce rows (pyarrow Table, polars DataFrame, mapping of columns, list of dicts) to the table schema.

    Missing nullable columns become nulls; unknown columns are an error (the schema is the contract).
    """
    schema = t.schema
    if isinstance(rows, pa.Table):
        data = rows
    elif hasattr(rows, "to_arrow"):  # polars DataFrame
        data = rows.to_arrow()
    elif isinstance(rows, Mapping):
        data = pa.table(dict(rows))
    else:
        rows = list(rows)
        if not rows:
            return schema.empty_table()
        keys = list(dict.fromkeys(k for r in rows for k in r))  # union: a key may appear in later rows only
        data = pa.table({k: _column(t, k, [r.get(k) for r in rows]) for k in keys})
    unknown = set(data.column_names) - set(schema.names)
    if unknown:
        raise ValueError(f"{t.name}: unknown column(s) {', '.join(sorted(unknown))}")
    cols = []
    fields = []
    n = data.num_rows
    for f in schema:
        if f.name in data.column_names:
            col = data.column(f.name)
            if pa.types.is_dictionary(col.type) and col.type.value_type == f.type:
                fields.append(pa.field(f.name, col.type, nullable=f.nullable))  # keep dictionary encoding
                cols.append(col)
                continue
            if col.type != f.type:
                col = _cast(col, f.type, t.name, f.name)
        else:
            if not f.nullable:
                raise ValueError(f"{t.name}: missing required column {f.name}")
            col = pa.nulls(n, f.type)
        cols.append(col)
        fields.append(f)
    out = pa.Table.from_arrays(cols, schema=pa.schema(fields))
    for f in schema:
        if not f.nullable and out.column(f.name).null_count:
            raise ValueError(f"{t.name}: column {f.name} must not be null")
    return out


def _column(t: Table, name: str, values: list[Any]) -> pa.Array:
    """Build a column from Python values, typed by the schema where the values allow it."""
    try:
        f = t.schema.field(name)
    except KeyError:
        return pa.array(values)
    if pa.types.is_timestamp(f.type) and any(isinstance(v, int | float) for v in values):
        return pa.array(values, type=pa.float64())  # Unix seconds: converted by _cast
    try:
        return pa.array(values, type=f.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return pa.array(values)  # e.g. Unix seconds for a timestamp: cast later


def _cast(col: pa.ChunkedArray, typ: pa.DataType, tname: str, cname: str) -> pa.ChunkedArray:
    if pa.types.is_timestamp(typ) and (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        # numbers are Unix seconds
        ms = pc.cast(pc.round(pc.multiply(pc.cast(col, pa.float64()), 1000.0)), pa.int64())
        return pc.cast(ms, pa.timestamp("ms")).cast(typ)
    if pa.types.is_timestamp(typ) and pa.types.is_timestamp(col.type):
        if col.type.tz is None:
            col = pc.assume_timezone(col, "UTC") if col.type.unit else col
        return pc.cast(col, typ, safe=False)
    try:
        return pc.cast(col, typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"{tname}.{cname}: cannot store {col.type} as {typ}: {e}") from None


def write_parquet(t: Table, data: pa.Table, f: Any, *, level: int = 6) -> None:
    """Write with the encodings that make time series small: dictionaries for keys,
    DELTA_BINARY_PACKED for counters and timestamps, zstd on top."""
    delta = [c for c in (*t.delta_columns, t.partition_ts) if c in data.column_names]
    delta = [c for c in delta if pa.types.is_integer(data.schema.field(c).type)
             or pa.types.is_timestamp(data.schema.field(c).type)]
    dict_cols = [c for c in data.column_names if c not in delta]
    pq.write_table(
        data,
        f,
        compression="zstd",
        compression_level=level,
        use_dictionary=dict_cols,
        column_encoding={c: "DELTA_BINARY_PACKED" for c in delta},
        row_group_size=1 << 20,
        write_statistics=True,
        data_page_version="2.0",
    )


class Store:
    """The data dir. Thread-safe; several processes may append concurrently.

    ``shard`` names the part of the data dir this process writes (default: derived from the host
    name, see :func:`accelmon.store.shards.derive`); reading always covers every shard."""

    def __init__(self, data_dir: str | os.PathLike[str], *, gc_grace_seconds: float = 600.0,
                 read_only_ok: bool = False, shard: str | None = None) -> None:
        """Open (and create) the data dir. With ``read_only_ok``, a data dir this process cannot
        write (read-only mount, no permission) opens for reading: ``writable`` is then False."""
        self.root = Path(data_dir).absolute()
        try:
            self.shard = shards.validate(shard) if shard is not None else shards.derive()
        except ValueError as e:
            raise StoreError(f"{self.root}: shard: {e}") from None
        self.gc_grace_seconds = gc_grace_seconds
        self.writable = True
        # the daemon sets this: a file a view cannot read is moved to quarantine/ (store/check.py)
        self.quarantine_bad_files = False
        self._tlock = threading.Lock()
        self._writer_ready = False
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

    def prepare_writer(self) -> None:
        """Before this process first writes its shard: claim the shard for this host, move an
        unsharded store into it, remove leftovers of a killed partition swap, and give every
        table its (empty) epoch file so the views resolve. Idempotent; readers never call it."""
        if self._writer_ready:
            return
        with self._tlock:
            if self._writer_ready:
                return
            if not self.writable:
                raise StoreError(f"{self.root}: data dir is not writable")
            shards.claim(self)
            for name in TABLES:
                if shards.legacy_partitions(self.root, name):
                    with self._flock(name, "compact", fcntl.LOCK_EX), self._flock(name, "append", fcntl.LOCK_EX):
                        n = shards.migrate_legacy(self, name)
                    log.info("%s: moved %d partition(s) of the unsharded layout into shard %s", name, n, self.shard)
            from accelmon.store.check import remove_leftover_links

            for link in remove_leftover_links(self):  # a kill inside a partition swap (docs/store.md)
                log.warning("%s: removed the leftover of an interrupted partition swap", link)
            self._writer_ready = True
        self.ensure_epoch_files()

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
        if not self.shards(name) and shards.legacy_partitions(self.root, name):
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

    # ------------------------------------------------------------------ append
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
        return data.num_rows

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

    # ------------------------------------------------------------------ compaction
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

    def compact(
        self,
        tables: Sequence[str] | None = None,
        *,
        min_files: int = 2,
        partitions: Iterable[str] | None = None,
        failures: list[CompactionFailure] | None = None,
    ) -> list[CompactionResult]:
        """Merge each partition's files into one sorted file (accelmon/store/compaction.py)."""
        from accelmon.store.compaction import compact

        return compact(self, tables, min_files=min_files, partitions=partitions, failures=failures)

    def replace_partition(self, name: str, partition: str, data: Any) -> Path:
        """Replace a derived table's day partition with ``data`` as a new generation (rollups;
        accelmon/store/compaction.py)."""
        from accelmon.store.compaction import replace_partition

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

    def disk_bytes(self, name: str | None = None) -> int:
        names = [name] if name else list(TABLES)
        return sum(f.stat().st_size for n in names for f in self.files(n))

    # ------------------------------------------------------------------ reading
    def connect(self, *, threads: int | None = None) -> Any:
        """An in-memory DuckDB connection with every table and view defined.

        Never touches the catalog file, so it works while a user holds the catalog open."""
        import duckdb

        from accelmon.store.catalog import define_views

        con = duckdb.connect(":memory:")
        if threads:
            con.execute(f"SET threads={int(threads)}")
        define_views(con, self)
        return con

    def define_views(self, con: Any) -> list[Path]:
        """Define every table and view on a DuckDB connection; returns unreadable files left out."""
        from accelmon.store.catalog import define_views

        return define_views(con, self)

    def ensure_catalog(self) -> bool:
        """(Re)write the catalog file's views. Returns False when another process holds it."""
        from accelmon.store.catalog import write_catalog

        self.prepare_writer()  # this shard's epoch files: the catalog's globs must match a file
        return write_catalog(self)

    @property
    def catalog_path(self) -> Path:
        return self.root / "accelmon.duckdb"
