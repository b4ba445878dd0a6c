"""vmware.log parsing and incremental fetching (real-format lines, both prefixes)."""

from __future__ import annotations

import datetime as dt

import pytest

from accelmon.collector.vcenter.stunlog import (
    HttpResult,
    LogCursor,
    StunLogParser,
    fetch_new,
    log_url,
    match_stun,
    parse_chunks,
    parse_text,
    split_line,
)

UTC = dt.UTC

# source side (old prefix), then the destination's new vmware.log (old prefix)
OLD_SRC = """\
2015-10-27T22:01:38.102Z| vmx| I120: MigrateVMXdrToSpec: type: 1 srcIp=<10.0.0.11> dstIp=<10.0.0.12> mid=150ad652356 uuid=4c4c4544-0038-4b10-8052-b4c04f4e4d32 priority=high checksumMemory=no maxDowntime=0 encrypted=0 resumeDuringPageIn=no latencySensitivity=normal
2015-10-27T22:01:38.104Z| vmx| I120: MigrateSetState: Transitioning from state 0 to 1.
2015-10-27T22:01:40.021Z| vmx| I120: Migrate: VM starting stun, waiting 100 seconds for go/no-go message.
2015-10-27T22:01:40.215Z| vcpu-0| I120: Migrate: VM successfully stunned
2015-10-27T22:01:40.216Z| vmx| I120: MigrateSetState: Transitioning from state 1 to 2.
"""
OLD_DST = """\
2015-10-27T22:01:41.900Z| vmx| I120: Migrate_Open: Restoring from <10.0.0.11> with migration id 1446018098006
2015-10-27T22:01:41.950Z| vmx| I120: MigrateSetState: Transitioning from state 11 to 12.
2015-10-27T22:01:42.149Z| vcpu-0| I120: Checkpoint_Unstun: vm stopped for 188405 us
2015-10-27T22:01:42.150Z| vmx| I120: MigrateSetState: Transitioning from state 12 to 0.
"""
NEW_VGPU = """\
2023-04-15T08:52:20.100Z In(05) vmx - MigrateVMXdrToSpec: type: 1 srcIp=<192.168.10.21> dstIp=<192.168.10.22> mid=187841d8604 uuid=4c4c4544-004a priority=high
2023-04-15T08:52:20.300Z In(05) vmx - MigrateSetState: Transitioning from state 0 to 1.
2023-04-15T08:52:21.000Z In(05) vmx - Migrate: VM starting stun, waiting 100 seconds for go/no-go message.
2023-04-15T08:52:21.400Z In(05) vcpu-0 - Migrate: VM successfully stunned
2023-04-15T08:52:22.500Z In(05) vmx - Migrate_Open: Restoring from <192.168.10.21> with migration id 1681548740100
2023-04-15T08:52:23.000Z In(05) vmx - vmiop_log: (0x0): Start restoring vGPU state for vGPU type grid_a100-8c
2023-04-15T08:52:34.879Z In(05) vcpu-0 - Checkpoint_Unstun: vm stopped for 12041233 us
"""
NEW_FAIL = """\
2023-04-15T09:10:00.000Z In(05) vmx - MigrateSetState: Transitioning from state 0 to 1.
2023-04-15T09:10:01.000Z In(05) vmx - Migrate: VM starting stun, waiting 100 seconds for go/no-go message.
2023-04-15T09:11:41.000Z Er(02) vmx - [msg.checkpoint.migration.maxSwitchoverTimeExceeded] The migration has exceeded the maximum switchover time of 100 second(s). ESX has preemptively failed the migration to allow the VM to continue running on the source.
"""
SNAPSHOT = """\
2023-04-15T07:00:00.000Z In(05) vmx - SnapshotVMX_TakeSnapshot start: 'before-upgrade', deviceState=0, lazy=0
2023-04-15T07:00:00.400Z In(05) vcpu-0 - Checkpoint_Unstun: vm stopped for 412000 us
"""


def test_both_prefixes_split() -> None:
    a = split_line("2015-10-27T22:01:42.149Z| vcpu-0| I120: Checkpoint_Unstun: vm stopped for 188405 us")
    b = split_line("2023-04-15T08:52:34.879Z In(05) vmx - Checkpoint_Unstun: vm stopped for 188405 us")
    assert a is not None and b is not None
    assert a[1] == b[1] == "Checkpoint_Unstun: vm stopped for 188405 us"
    assert a[0] == dt.datetime(2015, 10, 27, 22, 1, 42, 149000, tzinfo=UTC)
    assert b[0] == dt.datetime(2023, 4, 15, 8, 52, 34, 879000, tzinfo=UTC)
    assert split_line("garbage") is None
    assert split_line("2023-04-15T08:52:34.879Z something else") is None


def test_old_format_migration_across_rotation() -> None:
    p = parse_text(OLD_SRC + OLD_DST)
    assert len(p.records) == 1
    r = p.records[0]
    assert r.stun_seconds == pytest.approx(0.188405)
    assert r.started_ts == dt.datetime(2015, 10, 27, 22, 1, 38, 102000, tzinfo=UTC)
    assert r.ts == dt.datetime(2015, 10, 27, 22, 1, 42, 149000, tzinfo=UTC)
    assert r.migration_id == 1446018098006
    assert not r.vgpu and r.failure_reason is None
    assert p.stats.garbage_lines == 0 and p.stats.lines == 9


def test_new_format_vgpu_and_failure() -> None:
    p = parse_text(NEW_VGPU + NEW_FAIL)
    ok, failed = p.records
    assert ok.stun_seconds == pytest.approx(12.041233) and ok.vgpu
    assert failed.stun_seconds is None
    assert failed.failure_reason == "maxSwitchoverTimeExceeded"
    assert failed.started_ts == dt.datetime(2023, 4, 15, 9, 10, tzinfo=UTC)


def test_failed_switchover_still_reports_the_stun() -> None:
    # ESXi gives up at 100 s, the VM resumes on the source: the stun it suffered is logged after
    text = NEW_FAIL + (
        "2023-04-15T09:11:41.005Z In(05) vmx - MigrateSetState: Transitioning from state 3 to 5.\n"
        "2023-04-15T09:11:41.612Z In(05) vcpu-0 - Checkpoint_Unstun: vm stopped for 100612865 us\n"
        "2023-04-15T09:11:41.620Z In(05) vmx - MigrateSetState: Transitioning from state 5 to 0.\n"
    )
    (r,) = parse_text(text).records
    assert r.failure_reason == "maxSwitchoverTimeExceeded"
    assert r.stun_seconds == pytest.approx(100.612865)


def test_failed_without_stun_closed_by_state_0() -> None:
    text = NEW_FAIL + "2023-04-15T09:11:41.620Z In(05) vmx - MigrateSetState: Transitioning from state 5 to 0.\n"
    p = StunLogParser()
    p.feed_lines(text.splitlines())
    (r,) = p.records  # reported without waiting for the end of the text
    assert r.failure_reason == "maxSwitchoverTimeExceeded" and r.stun_seconds is None


def test_snapshot_stun_is_not_a_migration() -> None:
    p = parse_text(SNAPSHOT + NEW_VGPU)
    assert len(p.records) == 1 and p.records[0].vgpu
    assert p.stats.unrelated_stuns == 1


def test_garbage_skipped_and_counted() -> None:
    junk = ("\x00\x01\x02binary\n" + "no timestamp here\n" + "2023-13-45T99:99:99.000Z In(05) vmx - bad date\n"
            + "2024-05-01T10:0\n" + "2023-04-15T09:00:00.000Z In(05) vcpu-0 - Checkpoint_Unstun: vm stopped for abc us\n")
    raw = (junk + NEW_VGPU[:200] + "\n" + "x" * 100_000 + "\n" + NEW_VGPU).encode() + b"\xff\xfe\n"
    p = parse_chunks([raw])
    # 5 junk lines (one with a mangled stun payload) + huge line + invalid utf-8 line
    assert p.stats.garbage_lines == 7
    assert [r.stun_seconds for r in p.records] == [pytest.approx(12.041233)]


def test_match_stun_window() -> None:
    p = parse_text(OLD_SRC + OLD_DST + NEW_VGPU)
    end = dt.datetime(2023, 4, 15, 8, 52, 36, tzinfo=UTC)
    start = dt.datetime(2023, 4, 15, 8, 52, 19, tzinfo=UTC)
    r = match_stun(p.records, start, end)
    assert r is not None and r.vgpu
    assert match_stun(p.records, None, end) is r
    assert match_stun(p.records, start + dt.timedelta(hours=1), end + dt.timedelta(hours=1)) is None


def test_log_url() -> None:
    assert log_url("[LocalDS_0] gpu-vm-1/", "DC0") == "/folder/gpu-vm-1/vmware.log?dcPath=DC0&dsName=LocalDS_0"
    assert log_url("[ds one] dir with space", "DC 0") == (
        "/folder/dir%20with%20space/vmware.log?dcPath=DC%200&dsName=ds%20one"
    )
    assert log_url("not a datastore path", "DC0") is None


class RangeFiles:
    """Byte files served with HTTP Range semantics (the unit-level stand-in for /folder;
    the same code is exercised against the simulator's /folder in test_vcsim_*)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []

    def get(self, url: str, headers: dict[str, str]) -> HttpResult:
        self.requests.append((url, headers.get("Range", "")))
        if url == DIR:  # folder listing, as vCenter's /folder and vcsim serve it (HTML links)
            names = [u.split("/")[-1].split("?")[0] for u in self.files]
            return HttpResult(200, "".join(f'<a href="{n}">{n}</a>\n' for n in names).encode())
        data = self.files.get(url)
        if data is None:
            return HttpResult(404, b"")
        rng = headers.get("Range")
        if not rng:
            return HttpResult(200, data)
        spec = rng.removeprefix("bytes=")
        if spec.startswith("-"):
            return HttpResult(206, data[-int(spec[1:]):]) if data else HttpResult(416, b"")
        start = int(spec.rstrip("-"))
        if start >= len(data):
            return HttpResult(416, b"")
        return HttpResult(206, data[start:])


URL = "/folder/vm1/vmware.log?dcPath=DC0&dsName=LocalDS_0"
DIR = "/folder/vm1/?dcPath=DC0&dsName=LocalDS_0"
ROT = "/folder/vm1/vmware-{}.log?dcPath=DC0&dsName=LocalDS_0"


def _records(chunks: list[bytes]) -> list[float | None]:
    return [r.stun_seconds for r in parse_chunks(chunks).records]


def test_fetch_reads_only_new_bytes_and_follows_rotation() -> None:
    fs = RangeFiles()
    fs.files[URL] = OLD_SRC.encode()
    chunks, cur = fetch_new(fs.get, LogCursor(URL))
    assert b"".join(chunks) == OLD_SRC.encode() and cur.offset == len(OLD_SRC)
    # nothing new: only the tail overlap is transferred
    fs.requests.clear()
    chunks, cur2 = fetch_new(fs.get, cur)
    assert chunks == [] and cur2.offset == cur.offset
    assert fs.requests == [(URL, f"bytes={cur.offset - 64}-")]
    # a partial line is not consumed until it is complete
    fs.files[URL] += b"2015-10-27T22:01:40.300Z| vmx| I120: partial"
    chunks, cur3 = fetch_new(fs.get, cur2)
    assert chunks == [] and cur3.offset == cur2.offset
    # vMotion: the destination starts a new vmware.log, the old one becomes vmware-1.log
    fs.files[ROT.format(1)] = fs.files[URL] + b" line\n"
    fs.files[URL] = OLD_DST.encode()
    chunks, cur4 = fetch_new(fs.get, cur3)
    assert b"".join(chunks) == b"2015-10-27T22:01:40.300Z| vmx| I120: partial line\n" + OLD_DST.encode()
    assert cur4.offset == len(OLD_DST)
    # two rotations between polls (ESXi numbers upwards): the cursor's file is now vmware-2.log
    fs.files[URL] += NEW_VGPU[:300].encode()  # it ends mid-line
    part_start = fs.files[URL]
    fs.files[ROT.format(2)] = part_start.rsplit(b"\n", 1)[0] + b"\n"
    fs.files[ROT.format(3)] = NEW_FAIL.encode()
    fs.files[URL] = NEW_VGPU.encode()
    chunks, cur5 = fetch_new(fs.get, cur4)
    got = b"".join(chunks)
    assert got.startswith(NEW_VGPU[:300].rsplit("\n", 1)[0].encode())
    assert got.endswith(NEW_FAIL.encode() + NEW_VGPU.encode())
    assert _records(chunks)[-2:] == [None, pytest.approx(12.041233)]
    assert cur5.offset == len(NEW_VGPU) and cur5.rotated_max == 3


def test_first_read_includes_previous_log_and_cursor_roundtrip() -> None:
    fs = RangeFiles()
    fs.files[ROT.format(1)] = OLD_SRC.encode()
    fs.files[URL] = OLD_DST.encode()
    chunks, cur = fetch_new(fs.get, LogCursor(URL))
    assert _records(chunks) == [pytest.approx(0.188405)]
    again = LogCursor.from_json(cur.to_json())
    assert (again.url, again.offset, again.tail, again.seen) == (cur.url, cur.offset, cur.tail, True)
    assert fetch_new(fs.get, again)[0] == []


def test_missing_log_is_not_an_error() -> None:
    fs = RangeFiles()
    chunks, cur = fetch_new(fs.get, LogCursor(URL))
    assert chunks == [] and cur.offset == 0
