"""Stage new Parquet files outside the store, then publish them all or none.

Used by ``accelmon import-trace``; works for any table. The sequence (see docs/store.md,
"Importing traces"):

1. :class:`Staging` makes ``<data-dir>/.staging/<id>/`` (same file system as the store, so a
   publish is a ``rename(2)``) and holds an exclusive ``flock`` on ``<id>/.lock`` for its whole
   life: a staging dir whose lock can be taken belongs to a process that died.
   The id starts with the writer's shard: :func:`recover` only ever looks at its own shard's dirs,
   so an import running on another shard's host (whose ``flock`` this host cannot see) is safe.
2. The caller writes and ``fsync``\\ s its files there (invisible to readers: they glob
   ``tables/<t>/*/*.parquet``) and validates everything.
3. :func:`publish`, under the ledger lock: re-checks the ledger (a concurrent import of the same
   content may have won), writes the journal ``<id>/publish.json`` (atomic rename + fsync: the
   commit point), then, holding the tables' compaction locks, renames each staged file into its
   partition's current generation exactly like an append (``Store._append_partition``), then
   records the ledger entry (``state/<ledger>``). Only then is the staging dir removed.
4. A failure inside :func:`publish` (disk full creating a partition, a ledger write failing)
   renames the already published files back - compaction could not have merged them, its lock is
   held - and removes the journal: the store is exactly as before.
5. A ``kill -9`` before the journal leaves a staging dir without journal: :func:`recover` deletes
   it. After the journal, every staged file is complete and validated, so :func:`recover` *rolls
   forward*: publishes the files still staged and writes the ledger entry. Rolling forward is safe
   even if compaction merged the part already published meanwhile (rolling back would not be).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accelmon.store.fsutil import fsync_dir
from accelmon.store.schema import table
from accelmon.store.writer import Store

log = logging.getLogger(__name__)

STAGING = ".staging"
JOURNAL = "publish.json"
META = "meta.json"


class LedgerError(Exception):
    """The ledger file exists but cannot be read; nothing is overwritten."""


@dataclass
class StagedFile:
    table: str
    day: str  # YYYY-MM-DD partition
    staged: str  # path relative to the staging dir
    name: str  # final file name in the partition's generation directory
    rows: int


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Staging:
    """A private directory for one import's intermediate and final files (a context manager:
    leaving it removes the directory, whatever happened)."""

    def __init__(self, store: Store, label: str) -> None:
        self.store = store
        root = store.root / STAGING
        root.mkdir(exist_ok=True)
        store.prepare_writer()
        # "<shard>.<ms>-<pid>-<hex>": recover() of another shard's writer host leaves it alone
        self.id = f"{store.shard}.{time.time_ns() // 1_000_000:013d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # made under a temporary name and renamed once locked, so recover() never sees it unlocked
        tmp = root / f".tmp-{self.id}"
        tmp.mkdir()
        self._lock_fd: int | None = os.open(tmp / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        (tmp / META).write_text(json.dumps({"label": label, "pid": os.getpid()}))
        self.dir = root / self.id
        os.rename(tmp, self.dir)
        self.files: list[StagedFile] = []
        self._seq = 0

    def new_path(self, tname: str, day: str) -> tuple[Path, str]:
        """A path to write a file for partition ``day`` of ``tname``, and its final name."""
        self._seq += 1
        name = f"part-{time.time_ns() // 1_000_000:013d}-imp-{self.id[-8:]}-{self._seq:06d}.parquet"
        d = self.dir / "files" / tname / f"date={day}"
        d.mkdir(parents=True, exist_ok=True)
        return d / name, name

    def add(self, tname: str, day: str, path: Path, name: str, rows: int) -> None:
        """Register a written file (fsynced here) for publishing."""
        fsync_file(path)
        self.files.append(StagedFile(tname, day, str(path.relative_to(self.dir)), name, rows))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- ledger
def ledger_path(store: Store, ledger: str) -> Path:
    d = store.root / "state"
    d.mkdir(exist_ok=True)
    return d / ledger


def read_ledger(store: Store, ledger: str) -> dict[str, dict[str, Any]]:
    p = ledger_path(store, ledger)
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise LedgerError(f"{p}: cannot read the import log ({e}); fix or move it away") from None
    if not isinstance(data, dict):
        raise LedgerError(f"{p}: the import log is not a JSON object; fix or move it away")
    return data


@contextlib.contextmanager
def ledger_lock(store: Store, ledger: str) -> Iterator[None]:
    p = ledger_path(store, ledger)
    fd = os.open(p.with_name(f".{p.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _record(store: Store, ledger: str, key: str, entry: dict[str, Any]) -> None:
    data = read_ledger(store, ledger)
    data[key] = entry
    _write_json_atomic(ledger_path(store, ledger), data)


# ---------------------------------------------------------------------- publish
def _link(store: Store, tname: str, day: str) -> Path:
    return store.link_path(tname, day)


def _publish_one(store: Store, sdir: Path, f: StagedFile) -> Path:
    with store._flock(f.table, "append", fcntl.LOCK_SH):
        gen = store._current_gen(f.table, f.day, create=True)
        assert gen is not None
        dest = gen / f.name
        os.rename(sdir / f.staged, dest)
        fsync_dir(gen)
    return dest


def fault_point(point: str, n: int = 0) -> None:
    """Fault injection for the crash tests (tests/importer): at ``<point>:<n>``,
    ``IMPORT_TRACE_TEST_STOP`` makes the process SIGSTOP itself (the test then kills it with
    SIGKILL) and ``IMPORT_TRACE_TEST_FAIL`` raises "No space left on device"."""
    here = f"{point}:{n}"
    if os.environ.get("IMPORT_TRACE_TEST_STOP") == here:
        os.kill(os.getpid(), signal.SIGSTOP)
    if os.environ.get("IMPORT_TRACE_TEST_FAIL") == here:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def publish(stg: Staging, ledger: str, key: str, entry: dict[str, Any], *, force: bool = False) -> bool:
    """Publish every staged file and record ``entry`` under ``key`` in the ledger, all or nothing.

    Returns False (publishing nothing) when ``key`` is already in the ledger and not ``force``."""
    store = stg.store
    with ledger_lock(store, ledger):
        if not force and key in read_ledger(store, ledger):
            return False
        journal = {"ledger": ledger, "key": key, "entry": entry, "files": [asdict(f) for f in stg.files]}
        fsync_dir(stg.dir)
        for d in {(stg.dir / f.staged).parent for f in stg.files}:
            fsync_dir(d)
        _write_json_atomic(stg.dir / JOURNAL, journal)  # commit point for recover()
        fault_point("journal")
        tables = sorted({f.table for f in stg.files})
        with contextlib.ExitStack() as locks:
            for t in tables:  # compaction must not merge what we may still roll back
                locks.enter_context(store._flock(table(t).name, "compact", fcntl.LOCK_EX))
            done: list[tuple[StagedFile, Path, bool]] = []
            try:
                for i, f in enumerate(stg.files):
                    existed = _link(store, f.table, f.day).is_symlink()
                    done.append((f, _publish_one(store, stg.dir, f), existed))
                    fault_point("published", i + 1)
                _record(store, ledger, key, entry)
            except BaseException:
                _roll_back(store, stg.dir, done)
                raise
        fault_point("recorded")
    return True


def _roll_back(store: Store, sdir: Path, done: list[tuple[StagedFile, Path, bool]]) -> None:
    """Move published files back into staging (so a kill meanwhile still rolls forward
    consistently), then drop the journal; partitions this publish created are removed again."""
    for f, dest, existed in reversed(done):
        try:
            os.rename(dest, sdir / f.staged)
            fsync_dir(dest.parent)
            if not existed:
                _remove_if_empty(store, f.table, f.day)
        except OSError as e:  # pragma: no cover - nothing sensible left to do but say so
            log.error("rolling back %s: %s", dest, e)
            return  # keep the journal: recover() completes the import instead
    with contextlib.suppress(OSError):
        (sdir / JOURNAL).unlink()
        fsync_dir(sdir)


def _remove_if_empty(store: Store, tname: str, day: str) -> None:
    link = _link(store, tname, day)
    with store._flock(tname, "append", fcntl.LOCK_EX):
        if not link.is_symlink():
            return
        gen = link.resolve()
        if any(gen.iterdir()):
            return
        link.unlink()
        fsync_dir(link.parent)
        shutil.rmtree(gen, ignore_errors=True)
        with contextlib.suppress(OSError):
            gen.parent.rmdir()


# ---------------------------------------------------------------------- recovery
def recover(store: Store) -> list[str]:
    """Finish or discard what killed imports left in ``.staging``; one message per dir handled.

    A dir whose lock is held belongs to a running import and is left alone."""
    root = store.root / STAGING
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or _staging_shard(d.name) not in (None, store.shard):
            continue  # another shard's import: its lock lives on another host (docs/store.md)
        if d.name.startswith(".tmp-"):  # died between mkdir and rename (or is doing it right now)
            with contextlib.suppress(OSError):
                if time.time() - d.stat().st_mtime > 3600:
                    shutil.rmtree(d, ignore_errors=True)
            continue
        try:
            fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # alive
            label = "?"
            with contextlib.suppress(OSError, ValueError):
                label = json.loads((d / META).read_text())["label"]
            jp = d / JOURNAL
            if jp.exists():
                out.append(_roll_forward(store, d, json.loads(jp.read_text()), label))
            else:
                out.append(f"{label}: removed the staging files of an interrupted import (nothing had been stored)")
            shutil.rmtree(d, ignore_errors=True)
        finally:
            os.close(fd)
    return out


def _staging_shard(name: str) -> str | None:
    """The shard of a staging dir's name (``[.tmp-]<shard>.<ms>-…``); None for one made before shards."""
    name = name.removeprefix(".tmp-")
    return name.split(".", 1)[0] if "." in name else None


def _roll_forward(store: Store, d: Path, journal: dict[str, Any], label: str) -> str:
    files = [StagedFile(**f) for f in journal["files"]]
    n = 0
    for f in files:
        if (d / f.staged).exists():
            _publish_one(store, d, f)
            n += 1
    with ledger_lock(store, journal["ledger"]):
        if journal["key"] not in read_ledger(store, journal["ledger"]):
            _record(store, journal["ledger"], journal["key"], journal["entry"])
    rows = sum(f.rows for f in files)
    return (f"{label}: completed an interrupted import ({rows} rows; {n} of {len(files)} file(s) "
            f"were still to be published)")
