"""The data dir's layout: partitions, generations, locks and the atomic partition swap
(docs/store.md). The writer (:mod:`accelmon.store.writer`), compaction, the catalog and the
checks work on this; none of them imports the writer.

    tables/<table>/date=YYYY-MM-DD  -> symlink to the partition's current generation
    .gen/<table>/date=YYYY-MM-DD/g000001/part-….parquet
    .gen/<table>/.append.lock, .compact.lock          flock(2) files
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

from accelmon.store.fsutil import fsync_dir
from accelmon.store.rows import write_parquet
from accelmon.store.schema import TABLES, Table, table

EPOCH_PARTITION = "1970-01-01"  # holds one empty file per table so views always resolve
GEN_RE = re.compile(r"^g(\d{6,})$")
_counter = itertools.count()


class StoreError(Exception):
    """A problem with the data dir that the user must fix (one line, names the path)."""


class Layout:
    """The data dir's files: where each table's partitions and generations are, and the
    locked, crash-safe steps that change them (one file appended, one symlink swapped)."""

    def __init__(self, data_dir: str | os.PathLike[str], *, gc_grace_seconds: float = 600.0) -> None:
        self.root = Path(data_dir).absolute()
        self.gc_grace_seconds = gc_grace_seconds
        self.writable = True
        # the daemon sets this: a file a view cannot read is moved to quarantine/ (store/check.py)
        self.quarantine_bad_files = False
        self._tlock = threading.Lock()

    def ensure_epoch_files(self, tables: Iterable[str] | None = None) -> None:
        """Every table keeps one (empty) file in the 1970-01-01 partition, so its view resolves."""
        for name in tables or list(TABLES):
            t = table(name)
            gen = self._current_gen(t.name, EPOCH_PARTITION, create=False)
            if gen is None or not gen.is_dir() or not any(gen.glob("*.parquet")):
                self._append_partition(t, EPOCH_PARTITION, t.schema.empty_table())

    def table_glob(self, name: str) -> str:
        return str(self.root / "tables" / name / "date=*" / "*.parquet")

    def _gen_root(self, tname: str) -> Path:
        return self.root / ".gen" / tname

    @contextmanager
    def _flock(self, tname: str, which: str, mode: int) -> Iterator[None]:
        d = self._gen_root(tname)
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / f".{which}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _current_gen(self, tname: str, partition: str, create: bool) -> Path | None:
        link = self.root / "tables" / tname / f"date={partition}"
        if link.is_symlink():
            gen = link.resolve()
            if create and not gen.is_dir():  # its generation was removed by hand: start it again
                gen.mkdir(parents=True, exist_ok=True)
            return gen
        if not create:
            return None
        gen = self._gen_root(tname) / f"date={partition}" / "g000001"
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
        d = self.root / "tables" / name
        if not d.exists():
            return []
        return sorted(p.name.split("=", 1)[1] for p in d.iterdir() if p.name.startswith("date="))

    def files(self, name: str, partition: str | None = None) -> list[Path]:
        parts = [partition] if partition else self.partitions(name)
        out: list[Path] = []
        for p in parts:
            gen = self._current_gen(name, p, create=False)
            if gen is not None and gen.exists():
                out += sorted(gen.glob("*.parquet"))
        return out

    def disk_bytes(self, name: str | None = None) -> int:
        names = [name] if name else list(TABLES)
        return sum(f.stat().st_size for n in names for f in self.files(n))

    @property
    def catalog_path(self) -> Path:
        return self.root / "accelmon.duckdb"
