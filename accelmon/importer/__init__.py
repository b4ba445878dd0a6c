"""``accelmon import-trace``: GPU utilization traces from CSV into gpu_sample.

Format: header ``timestamp,gpu,util_percent`` and optional ``memory_used_bytes`` (any
column order; other columns are an error so typos do not go unnoticed). ``timestamp`` is
Unix seconds (float) or ISO 8601 (a naive time is UTC). Blank lines are ignored.

All or nothing, idempotent, in bounded memory (docs/store.md, "Importing traces"):

1. the file's SHA-256 is looked up in the import log (``state/imports.json``): a file already
   imported adds nothing (``--force`` imports it again);
2. pass 1 streams the CSV in blocks, checks every row (problems are ``FILE:LINE: COLUMN: …``)
   and spills the rows by (day, GPU bucket) into a staging dir (``accelmon.importer.partition``);
3. pass 2 checks duplicate (GPU, timestamp) rows per day and bucket and writes one staged
   Parquet file per day;
4. only with no problem at all, :func:`accelmon.store.staging.publish` renames the files into
   the store and records the import log entry, all or nothing; then the catalog is written.

Values are stored as given: ``util_percent`` stays a gauge; readers derive busy time from it as
the architecture defines (a sample v over its period dt is busy for dt·v/100).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accelmon.errors import UserError
from accelmon.importer.parse import MAX_PROBLEMS, Problems, Reader, TraceError, check_path, read_header
from accelmon.importer.partition import Spill, bucket_count, dedupe_and_stage
from accelmon.store import staging
from accelmon.store.writer import Store

__all__ = ["MAX_PROBLEMS", "ImportResult", "TraceError", "import_trace", "recover"]

log = logging.getLogger(__name__)

LEDGER = "imports.json"

# progress(phase, done, total): phase "hash" / "read" (bytes), "check" (rows), "publish"
Progress = Callable[[str, int, int], None]


@dataclass
class ImportResult:
    path: Path
    rows: int  # rows stored by this import (0 when already imported)
    gpus: int
    first: dt.datetime | None
    last: dt.datetime | None
    duplicates: int = 0  # identical duplicate rows dropped
    blank_lines: int = 0
    seconds: float = 0.0
    already: dict[str, object] | None = None  # the import log entry when nothing was done


def recover(store: Store) -> list[str]:
    """Finish (or discard) imports a kill interrupted; one message each."""
    try:
        return staging.recover(store)
    except staging.LedgerError as e:
        raise UserError(str(e), exit_code=1) from None


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _disk_error(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or any(
        s in str(e) for s in ("No space left", "File too large", "Disk quota"))


def import_trace(store: Store, path: Path, *, force: bool = False, progress: Progress | None = None) -> ImportResult:
    t0 = time.monotonic()
    name = str(path)
    size = check_path(path)
    header = read_header(path)
    st0 = path.stat()
    if progress:
        progress("hash", 0, size)
    digest = _digest(path)
    try:
        prev = staging.read_ledger(store, LEDGER).get(digest)
    except staging.LedgerError as e:
        raise UserError(str(e), exit_code=1) from None
    if prev is not None and not force:
        return ImportResult(path, 0, 0, None, None, already=prev, seconds=time.monotonic() - t0)
    problems = Problems(name)
    try:
        with staging.Staging(store, name) as stg:
            spill_dir = stg.dir / "spill"
            spill_dir.mkdir()
            spill = Spill(spill_dir, bucket_count(size), header.has_mem)
            reader = Reader(path, header, problems)
            for batch in reader.batches():
                spill.add(batch)
                if progress:
                    progress("read", reader.bytes_read(), size)
            staging.fault_point("read")
            if problems.total:
                raise TraceError(problems.lines())
            if spill.rows == 0:
                raise TraceError([f"{name}:2: no data rows"])
            staged = dedupe_and_stage(spill, stg, problems,
                                      (lambda n: progress("check", n, spill.rows)) if progress else None)
            if problems.total:
                raise TraceError(problems.lines())
            st1 = path.stat()
            if (st1.st_size, st1.st_mtime_ns) != (st0.st_size, st0.st_mtime_ns):
                raise UserError(f"{name}: the file changed while it was being imported; nothing imported",
                                exit_code=1)
            entry: dict[str, object] = {
                "path": name, "rows": staged.rows, "gpus": len(spill.gpus),
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            if progress:
                progress("publish", 0, len(stg.files))
            try:
                published = staging.publish(stg, LEDGER, digest, entry, force=force)
            except staging.LedgerError as e:
                raise UserError(str(e), exit_code=1) from None
            if not published:  # a concurrent import of the same content won
                prev = staging.read_ledger(store, LEDGER).get(digest)
                return ImportResult(path, 0, 0, None, None, already=prev, seconds=time.monotonic() - t0)
    except OSError as e:
        if _disk_error(e):
            raise UserError(f"{name}: disk full in {store.root} while importing; nothing imported",
                            exit_code=1) from None
        raise UserError(f"{name}: {e.strerror or e}; nothing imported", exit_code=1) from None
    _write_catalog(store)
    assert spill.first_ms is not None and spill.last_ms is not None
    return ImportResult(
        path, staged.rows, len(spill.gpus),
        dt.datetime.fromtimestamp(spill.first_ms / 1000, dt.UTC),
        dt.datetime.fromtimestamp(spill.last_ms / 1000, dt.UTC),
        duplicates=staged.duplicates, blank_lines=reader.blank_lines, seconds=time.monotonic() - t0,
    )


def _write_catalog(store: Store) -> None:
    """Every command that writes leaves a usable catalog (views only; skipped while a user holds it)."""
    try:
        if not store.ensure_catalog():
            log.info("catalog %s is held open by another process; its views stay as they are", store.catalog_path)
    except Exception as e:  # noqa: BLE001 - the import is stored; the catalog is a convenience
        log.warning("catalog %s: not written: %s", store.catalog_path, str(e).splitlines()[0] if str(e) else e)


def _iso(t: dt.datetime | None) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z") if t else "?"


def _dur(s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= 2 * size:
            return f"{s / size:.1f} {unit}"
    return f"{s:g} s"


def summary(res: ImportResult) -> str:
    """The one line printed for a file."""
    if res.already is not None:
        a = res.already
        return (f"{res.path}: already imported on {a.get('at')} ({a.get('rows')} rows); nothing added "
                f"(--force imports it again)")
    span = (res.last - res.first).total_seconds() if res.first and res.last else 0.0
    extra = f", {res.blank_lines} blank line(s) ignored" if res.blank_lines else ""
    return (f"{res.path}: imported {res.rows} samples of {res.gpus} GPU(s), {_iso(res.first)} .. {_iso(res.last)} "
            f"({_dur(span)}), {res.duplicates} identical duplicate row(s) dropped{extra}, "
            f"{res.seconds:.1f} s")


def stderr_progress(name: str, every_s: float = 5.0, out: Callable[[str], None] | None = None) -> Progress:
    """A progress callback that prints one line to stderr at most every ``every_s`` seconds
    (so short imports, and tests, print none)."""
    start = time.monotonic()
    last = [start]
    emit = out or (lambda s: print(s, file=sys.stderr, flush=True))
    words = {"hash": "hashing", "read": "reading", "check": "checking duplicates", "publish": "publishing"}

    def cb(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < every_s:
            return
        last[0] = now
        pct = f" {100 * done / total:.0f} %" if total else ""
        unit = "rows" if phase == "check" else ("files" if phase == "publish" else "bytes")
        emit(f"import-trace: {name}: {words.get(phase, phase)}{pct} ({done:,} of {total:,} {unit}, "
             f"{now - start:.0f} s)")

    return cb
