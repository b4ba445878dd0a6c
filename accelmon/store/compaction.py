"""Compaction: merge a partition's files into one sorted file in a new generation, then swap.

Reads the generation's immutable files without any lock, writes the sorted result into a new
generation directory, then - under the append lock taken exclusively - hard-links any file that
arrived meanwhile and swaps the partition symlink with ``rename(2)`` (docs/store.md). A partition
that cannot be compacted (an unreadable input file, a full disk) is left as it was and reported;
it never stops the other partitions and tables.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from accelmon.store.fsutil import fsync_dir
from accelmon.store.layout import EPOCH_PARTITION, GEN_RE, Layout, StoreError
from accelmon.store.rows import to_arrow, write_parquet
from accelmon.store.schema import TABLES, Table, table
from accelmon.store.sortkeys import sort_indices

log = logging.getLogger("accelmon.store.writer")


class BadParquetFile(StoreError):
    """A store file that cannot be read as Parquet (names the file)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: unreadable Parquet file ({reason})")
        self.path = path
        self.reason = reason


@dataclass
class CompactionFailure:
    table: str
    partition: str
    error: str
    bad_file: Path | None = None  # set when the cause is an unreadable input file


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def _read_input(t: Table, path: Path, strings: list[str]) -> pa.Table:
    try:
        raw = pq.read_table(path, read_dictionary=strings)
    except (pa.ArrowException, OSError) as e:
        reason = re.sub(r"^Could not open Parquet input source '[^']*': ", "", _one_line(e))
        raise BadParquetFile(path, reason) from None
    return to_arrow(t, raw)


@dataclass
class CompactionResult:
    table: str
    partition: str
    files_in: int
    rows: int
    bytes_out: int


def compact(
    store: Layout,
    tables: Sequence[str] | None = None,
    *,
    min_files: int = 2,
    partitions: Iterable[str] | None = None,
    failures: list[CompactionFailure] | None = None,
) -> list[CompactionResult]:
    """Merge each partition's files into one sorted file. Safe to run while appending.

    A partition that fails (an unreadable input file, a disk error) does not stop the others:
    it is left as it was and appended to ``failures`` (or, without that list, logged once per
    table and run)."""
    results = []
    store.prepare_writer()
    for name in tables or list(TABLES):
        t = table(name)
        failed: list[CompactionFailure] = []
        for day in partitions or store.own_partitions(name):  # this shard only
            if day == EPOCH_PARTITION:
                continue
            try:
                r = _compact_partition(store, t, day, min_files)
            except Exception as e:  # noqa: BLE001 - one partition must not stop the rest
                if isinstance(e, BadParquetFile):
                    shown = store.link_path(name, day) / e.path.name
                    failed.append(CompactionFailure(name, day, f"{shown}: unreadable Parquet file ({e.reason})",
                                                    e.path))
                else:
                    failed.append(CompactionFailure(name, day, _one_line(e)))
                continue
            if r:
                results.append(r)
        if failed and failures is None:  # a caller that collects the failures reports them
            log.warning("compaction of %s failed for %d partition(s) (%s): %s", name, len(failed),
                        ", ".join(f.partition for f in failed[:5]) + (", …" if len(failed) > 5 else ""),
                        failed[0].error)
        if failures is not None:
            failures.extend(failed)
    return results


def _next_generation(t: Table, old: Path, data: pa.Table) -> tuple[Path, Path]:
    """The generation after ``old`` holding ``data`` as one durable Parquet file (not yet visible:
    the caller swaps the partition link). A leftover of a crashed compaction/replace is removed."""
    m = GEN_RE.match(old.name)
    new = old.parent / f"g{(int(m.group(1)) if m else 0) + 1:06d}"
    while new.exists():
        shutil.rmtree(new)
    new.mkdir()
    out = new / f"compact-{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = new / f".tmp-{out.name}"
    try:
        with open(tmp, "wb") as f:
            write_parquet(t, data, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    os.rename(tmp, out)
    return new, out


def _compact_partition(store: Layout, t: Table, day: str, min_files: int) -> CompactionResult | None:
    with store._flock(t.name, "compact", fcntl.LOCK_EX):
        old = store._current_gen(t.name, day, create=False)
        if old is None:
            return None
        inputs = sorted(old.glob("*.parquet"))
        if len(inputs) < min_files:
            return None
        strings = [c.name for c in t.columns if pa.types.is_string(c.type)]
        data = pa.concat_tables(
            [_read_input(t, p, strings) for p in inputs], promote_options="permissive"
        ).unify_dictionaries()
        data = data.combine_chunks()
        keys = [c for c in t.sort_by if c in data.column_names]
        if keys and data.num_rows:
            data = data.take(sort_indices(data, keys))
        new, out = _next_generation(t, old, data)
        link = store.link_path(t.name, day)
        with store._flock(t.name, "append", fcntl.LOCK_EX):
            done = {p.name for p in inputs}
            for p in sorted(old.glob("*.parquet")):
                if p.name not in done:  # arrived during compaction
                    os.link(p, new / p.name)
            fsync_dir(new)
            store._swap_link(link, new)
        (old / ".retired").write_text(str(time.time()))
        return CompactionResult(t.name, day, len(inputs), data.num_rows, out.stat().st_size)


def replace_partition(store: Layout, name: str, day: str, data: pa.Table | None) -> Path:
    """Replace a partition's content with ``data`` (None: empty) as a new generation - the swap of
    compaction, so a reader sees the old content or the new, never both. Files appended meanwhile
    are *not* carried over: this is for derived tables (rollups) whose one writer is the caller."""
    t = table(name)
    data = to_arrow(t, data if data is not None else t.schema.empty_table())
    keys = [c for c in t.sort_by if c in data.column_names]
    if keys and data.num_rows:
        data = data.take(sort_indices(data, keys))
    with store._flock(t.name, "compact", fcntl.LOCK_EX):
        old = store._current_gen(t.name, day, create=True)
        assert old is not None
        new, out = _next_generation(t, old, data)
        fsync_dir(new)
        with store._flock(t.name, "append", fcntl.LOCK_EX):
            store._swap_link(store.link_path(t.name, day), new)
        (old / ".retired").write_text(str(time.time()))
    return out
