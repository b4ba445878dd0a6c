"""vmware.log: find the stun time of each vMotion, reading only the bytes not read before.

Two line prefixes exist (both parsed)::

    2015-10-27T22:01:42.149Z| vcpu-0| I120: Checkpoint_Unstun: vm stopped for 188405 us
    2023-04-15T08:52:34.879Z In(05) vmx - Checkpoint_Unstun: vm stopped for 188405 us

The lines of one migration, source side then destination side (a vMotion starts a new
``vmware.log`` on the destination and the previous one becomes ``vmware-1.log``)::

    MigrateVMXdrToSpec: type: 1 srcIp=<ip> dstIp=<ip> mid=<hex> ...
    MigrateSetState: Transitioning from state 0 to 1.
    Migrate: VM starting stun, waiting 100 seconds for go/no-go message.
    Migrate: VM successfully stunned
    Migrate_Open: Restoring from <ip> with migration id <decimal>
    vmiop_log: (0x0): Start restoring vGPU state ...
    Checkpoint_Unstun: vm stopped for 188405 us
    [msg.checkpoint.migration.maxSwitchoverTimeExceeded] The migration has exceeded ...

A ``Checkpoint_Unstun`` outside a migration (snapshot, suspend) is not a vMotion stun and is
ignored.  A line with neither prefix is garbage: skipped and counted, never an error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

_TS = r"(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)"
# 2015-10-27T22:01:42.149Z| vcpu-0| I120: msg      (I125+ = continuation)
_OLD_RE = re.compile(_TS + r"\| (?P<thread>[^|]*)\| (?P<level>[A-Z]\d+\+?):\s?(?P<msg>.*)$")
# 2023-04-15T08:52:34.879Z In(05) vmx - msg       (also Wa(03), Er(02), Cr(01), Db(10), In(05)+)
_NEW_RE = re.compile(_TS + r" (?P<level>[A-Z][a-z]\(\d+\)\+?) (?P<thread>\S+)(?: \d+)? - ?(?P<msg>.*)$")

_UNSTUN_RE = re.compile(r"Checkpoint_Unstun: vm stopped for (?P<us>\d+) us")
_XDR_RE = re.compile(r"MigrateVMXdrToSpec: type: \d+ .*?\bmid=(?P<mid>[0-9a-fA-Fx]+)")
_OPEN_RE = re.compile(r"Migrate_Open: Restoring from \S+ with migration id (?P<mid>\d+)")
_MIGRATE_MARK_RE = re.compile(r"^(?:MigrateSetState:|Migrate: VM (?:starting stun|successfully stunned))")
_FAIL_RE = re.compile(r"\[msg\.(?:checkpoint\.migration|migrate)\.(?P<reason>\w+)\]")
_VMIOP_RE = re.compile(r"vmiop_log:")

# an open migration with no end after this long is dropped (the log was cut or lost)
EPISODE_TIMEOUT = dt.timedelta(minutes=30)
MAX_LINE_BYTES = 64 * 1024


@dataclass
class StunRecord:
    """One migration as seen in a vmware.log."""

    ts: dt.datetime  # time of the closing line (Checkpoint_Unstun, or the failure)
    started_ts: dt.datetime  # first migration line of the episode
    stun_seconds: float | None
    migration_id: int | None
    vgpu: bool
    failure_reason: str | None = None


@dataclass
class LogStats:
    lines: int = 0
    garbage_lines: int = 0
    unrelated_stuns: int = 0  # Checkpoint_Unstun outside a migration (snapshots)

    def add(self, o: LogStats) -> None:
        self.lines += o.lines
        self.garbage_lines += o.garbage_lines
        self.unrelated_stuns += o.unrelated_stuns


def parse_ts(s: str) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def split_line(line: str) -> tuple[dt.datetime, str] | None:
    """``(timestamp, message)`` of a vmware.log line in either format, or None."""
    m = _OLD_RE.match(line) or _NEW_RE.match(line)
    if m is None:
        return None
    ts = parse_ts(m.group("ts"))
    if ts is None:
        return None
    return ts, m.group("msg")


@dataclass
class _Episode:
    started: dt.datetime
    migration_id: int | None = None
    vgpu: bool = False
    failure: str | None = None


_END_STATE_RE = re.compile(r"^MigrateSetState: Transitioning from state \d+ to 0\b")
# messages whose payload must parse; a mangled one is garbage, not silence
_KEYWORDS = ("Checkpoint_Unstun:", "Migrate_Open:", "MigrateVMXdrToSpec:")


@dataclass
class StunLogParser:
    """Incremental parser: feed text line by line (in file order); collect ``records``.

    An episode opens at the first migration line; ``Checkpoint_Unstun`` inside it gives the
    stun time and closes it (with the failure reason if one was logged before: a failed
    switchover still stunned the VM); a return to migration state 0 without a stun closes a
    failed episode."""

    records: list[StunRecord] = field(default_factory=list)
    stats: LogStats = field(default_factory=LogStats)
    _ep: _Episode | None = None

    def feed_lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.feed_line(line)

    def feed_line(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if not line:
            return
        self.stats.lines += 1
        parsed = split_line(line)
        if parsed is None:
            self.stats.garbage_lines += 1
            return
        ts, msg = parsed
        ep = self._ep
        if ep is not None and ts - ep.started > EPISODE_TIMEOUT:
            self._close(ts)
            ep = None
        if (m := _XDR_RE.search(msg)) is not None:  # source side: a new migration begins
            if ep is not None:
                self._close(ts)
            ep = self._open(ts)
            with contextlib.suppress(ValueError):
                ep.migration_id = int(m.group("mid"), 16)
        elif (m := _OPEN_RE.search(msg)) is not None:  # destination side of the same one
            if ep is not None and (ep.failure or (ep.migration_id not in (None, int(m.group("mid"))))):
                self._close(ts)
            ep = self._open(ts)
            ep.migration_id = int(m.group("mid"))
        elif (m := _UNSTUN_RE.search(msg)) is not None:
            if ep is None:
                self.stats.unrelated_stuns += 1
                return
            self.records.append(
                StunRecord(ts, ep.started, int(m.group("us")) / 1e6, ep.migration_id, ep.vgpu, ep.failure)
            )
            self._ep = None
        elif any(k in msg for k in _KEYWORDS):
            self.stats.garbage_lines += 1  # e.g. "vm stopped for abc us"
        elif _END_STATE_RE.search(msg):
            if ep is not None:
                self._close(ts)
        elif _MIGRATE_MARK_RE.search(msg):
            self._open(ts)
        elif _VMIOP_RE.search(msg):
            if ep is not None:
                ep.vgpu = True
        elif (m := _FAIL_RE.search(msg)) is not None:
            ep = self._open(ts)
            ep.failure = m.group("reason")

    def finish(self) -> None:
        """End of the text read this time: a failed migration still open is reported."""
        if self._ep is not None and self._ep.failure:
            self._close(self._ep.started)
        self._ep = None

    def _open(self, ts: dt.datetime) -> _Episode:
        if self._ep is None:
            self._ep = _Episode(started=ts)
        return self._ep

    def _close(self, ts: dt.datetime) -> None:
        ep, self._ep = self._ep, None
        if ep is not None and ep.failure:
            self.records.append(StunRecord(ts, ep.started, None, ep.migration_id, ep.vgpu, ep.failure))


def parse_text(text: str) -> StunLogParser:
    p = StunLogParser()
    p.feed_lines(text.splitlines())
    p.finish()
    return p


def match_stun(
    records: Iterable[StunRecord],
    started_at: dt.datetime | None,
    ended_at: dt.datetime,
    slack: dt.timedelta = dt.timedelta(minutes=2),
) -> StunRecord | None:
    """The log record of the migration that vCenter reported from ``started_at`` to ``ended_at``.

    Host and vCenter clocks differ a little, hence the slack; without a start event the
    window reaches back 10 minutes.  The record closest to the end wins."""
    lo = (started_at or ended_at - dt.timedelta(minutes=10)) - slack
    hi = ended_at + slack
    best: StunRecord | None = None
    for r in records:
        if lo <= r.ts <= hi and (best is None or abs(r.ts - ended_at) < abs(best.ts - ended_at)):
            best = r
    return best


# ---------------------------------------------------------------------------------- fetching

@dataclass
class HttpResult:
    status: int
    body: bytes


HttpGet = Callable[[str, dict[str, str]], HttpResult]

TAIL_BYTES = 64  # bytes before the cursor re-read to detect that the file was rotated
MAX_ROTATIONS = 6  # vmx default log.keepOld
FIRST_READ_BYTES = 4 * 1024 * 1024  # first look at a log: at most its last 4 MiB
_ROTATED_RE = re.compile(r"vmware-(\d+)\.log")


def log_url(log_directory: str, dc_path: str, file: str = "vmware.log") -> str | None:
    """``[LocalDS_0] vm1/`` + ``DC0`` → ``/folder/vm1/vmware.log?dcPath=DC0&dsName=LocalDS_0``."""
    m = re.match(r"^\[(?P<ds>[^\]]+)\]\s*(?P<dir>.*?)/?$", log_directory or "")
    if m is None:
        return None
    folder = m.group("dir").strip("/")
    path = f"{folder}/{file}" if folder else file
    return f"/folder/{quote(path)}?dcPath={quote(dc_path, safe='')}&dsName={quote(m.group('ds'), safe='')}"


def _rotated_name(url: str, k: int) -> str:
    return url.replace("/vmware.log?", f"/vmware-{k}.log?", 1)


def _dir_url(url: str) -> str:
    return url.replace("/vmware.log?", "/?", 1)


@dataclass
class LogCursor:
    url: str
    offset: int = 0  # bytes of vmware.log consumed (always at a line end)
    tail: bytes = b""  # the TAIL_BYTES before offset
    seen: bool = False  # read at least once
    rotated_max: int = 0  # highest N of vmware-N.log seen (ESXi numbers rotated logs upwards)

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "offset": self.offset, "tail": self.tail.hex(), "rot": self.rotated_max}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LogCursor:
        return cls(d["url"], int(d.get("offset", 0)), bytes.fromhex(d.get("tail", "")), True, int(d.get("rot", 0)))


def _get_from(get: HttpGet, url: str, start: int) -> HttpResult:
    r = get(url, {"Range": f"bytes={start}-"} if start > 0 else {})
    if r.status == 200 and start > 0:  # server ignored Range
        return HttpResult(206, r.body[start:] if len(r.body) >= start else b"")
    if r.status == 416:
        return HttpResult(416, b"")
    return r


def _continues(get: HttpGet, url: str, cur: LogCursor) -> bytes | None:
    """The bytes after the cursor if ``url`` is the file the cursor was reading, else None."""
    start = cur.offset - len(cur.tail)
    r = _get_from(get, url, start)
    if r.status not in (200, 206) or not r.body.startswith(cur.tail):
        return None
    return r.body[len(cur.tail):]


def _whole(get: HttpGet, url: str, limit: int = FIRST_READ_BYTES) -> bytes:
    r = get(url, {"Range": f"bytes=-{limit}"})
    if r.status not in (200, 206):  # 416: empty file
        return b""
    body = r.body[-limit:]
    if len(r.body) >= limit:
        nl = body.find(b"\n")  # drop the partial first line of a cut read
        if nl >= 0:
            body = body[nl + 1:]
    return body


def list_rotated(get: HttpGet, url: str) -> list[int]:
    """N of the ``vmware-N.log`` files in the VM's folder, ascending (oldest first on ESXi).

    Reads the folder listing; where the server gives none, probes vmware-1 … vmware-6."""
    r = get(_dir_url(url), {})
    if r.status == 200 and r.body:
        return sorted({int(n) for n in _ROTATED_RE.findall(r.body.decode("utf-8", errors="replace"))})
    found = []
    for k in range(1, MAX_ROTATIONS + 1):
        if get(_rotated_name(url, k), {"Range": "bytes=0-0"}).status in (200, 206):
            found.append(k)
    return found


def fetch_new(get: HttpGet, cur: LogCursor) -> tuple[list[bytes], LogCursor]:
    """New complete lines of a VM's log since ``cur``, oldest first, following rotation.

    ESXi starts a new ``vmware.log`` at each power-on and vMotion (the destination writes a
    new one) and renames the previous one to ``vmware-N.log`` with the next N.  Returns the
    chunks to parse in file order and the advanced cursor.  Only whole lines are consumed; a
    partial last line is read again next time."""
    chunks: list[bytes] = []
    rot_max = cur.rotated_max
    if not cur.seen:
        ns = list_rotated(get, cur.url)
        for n in ns[-MAX_ROTATIONS:]:
            chunks.append(_whole(get, _rotated_name(cur.url, n)))
        rot_max = max(ns, default=0)
        current_start = 0
        r = _get_from(get, cur.url, 0)
        if r.status not in (200, 206):
            return chunks, LogCursor(cur.url, 0, b"", False, rot_max)
        current = r.body
    else:
        new = _continues(get, cur.url, cur)
        if new is not None:
            current_start = cur.offset
            current = new
        else:  # rotated: our file is now the oldest vmware-N.log newer than the last one seen
            ns = list_rotated(get, cur.url)
            fresh = [n for n in ns if n > cur.rotated_max] or ns[-MAX_ROTATIONS:]
            found = None
            for i, n in enumerate(fresh):
                rest = _continues(get, _rotated_name(cur.url, n), cur)
                if rest is not None:
                    found = i
                    chunks.append(rest)
                    break
            for n in fresh[(found + 1 if found is not None else 0):]:
                chunks.append(_whole(get, _rotated_name(cur.url, n)))
            rot_max = max([rot_max, *ns])
            current_start = 0
            r = _get_from(get, cur.url, 0)
            current = r.body if r.status in (200, 206) else b""
    last_nl = current.rfind(b"\n")
    consumed = current[: last_nl + 1] if last_nl >= 0 else b""
    if consumed:
        chunks.append(consumed)
    if current_start == 0 and not consumed:
        return chunks, LogCursor(cur.url, 0, b"", True, rot_max)
    new_offset = current_start + len(consumed)
    if current_start and len(consumed) < TAIL_BYTES:
        tail = (cur.tail + consumed)[-TAIL_BYTES:]
    else:
        tail = consumed[-TAIL_BYTES:]
    return chunks, LogCursor(cur.url, new_offset, tail, True, rot_max)


def parse_chunks(chunks: Iterable[bytes], parser: StunLogParser | None = None) -> StunLogParser:
    """Feed raw log bytes (undecodable bytes are replaced; such lines usually count as garbage)."""
    p = parser or StunLogParser()
    for c in chunks:
        text = c.decode("utf-8", errors="replace")
        for line in text.splitlines():
            if len(line) > MAX_LINE_BYTES:
                p.stats.lines += 1
                p.stats.garbage_lines += 1
                continue
            p.feed_line(line)
    p.finish()
    return p
