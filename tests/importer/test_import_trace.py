"""``accelmon import-trace`` as a user runs it: all or nothing, idempotent, one-line errors,
a usable catalog. Each failure the issue reported is reproduced first."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from .helpers import distinct_keys, grid, rows, run_import, snapshot, write_trace

T = 1_796_500_000  # 2026-12-05T17:06:40Z


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data dir that already holds an imported trace (so "unchanged" means something)."""
    d = tmp_path / "data"
    r = run_import(d, write_trace(tmp_path / "base.csv", grid(2, 30, t0=T - 86_400)))
    assert r.returncode == 0, r.stderr
    return d


def _refused(r, data: Path, before: dict, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr
    assert snapshot(data) == before, "a refused import changes nothing stored"
    assert not any((data / ".staging").iterdir()), "no staging files left behind"


def test_millisecond_typo_in_last_row_stores_nothing_and_a_retry_imports_once(data: Path, tmp_path: Path) -> None:
    """The issue: a valid day, then `1796500020000` in the last row -> OverflowError traceback after
    the day was written, import log not updated, a retry stored the rows twice."""
    good = grid(3, 100, t0=T)
    f = write_trace(tmp_path / "typo.csv", [*good, (1_796_500_020_000, "gpu-00", 5)])
    before = snapshot(data)
    r = run_import(data, f)
    last = len(good) + 2
    _refused(r, data, before, f"{f}:{last}: timestamp: outside the plausible range", "milliseconds",
             '"1796500020000"', f"accelmon: {f}: nothing imported")
    assert len(r.stderr.strip().splitlines()) == 2
    n0 = rows(data)
    f.write_text(f.read_text().replace("1796500020000", "1796501020"))  # fixed by the user
    r = run_import(data, f)
    assert r.returncode == 0, r.stderr
    assert f"imported {len(good) + 1} samples of 3 GPU(s)" in r.stdout
    r = run_import(data, f)  # the retry
    assert r.returncode == 0 and "already imported" in r.stdout and "nothing added" in r.stdout
    assert len(r.stdout.strip().splitlines()) == 1
    assert rows(data) == n0 + len(good) + 1 == distinct_keys(data)


@pytest.mark.parametrize(("row", "needle"), [
    ((1e300, "gpu-00", 5), 'timestamp: outside the plausible range 2000-01-01 .. 2100-01-01: "1e+300"'),
    (("inf", "gpu-00", 5), 'timestamp: outside the plausible range'),
    ((123, "gpu-00", 5), 'timestamp: outside the plausible range'),
    (("nan", "gpu-00", 5), 'timestamp: outside the plausible range'),
    (("3026-01-01T00:00:00", "gpu-00", 5), "timestamp: outside the plausible range"),
    ((T, "gpu-00", 1e30), 'util_percent: out of range 0–100: "1e+30"'),
    ((T, "gpu-00", -0.5), 'util_percent: out of range 0–100: "-0.5"'),
    ((T, "gpu-00", "nan"), 'util_percent: not a number: "nan"'),
    ((T, "  ", 5), "gpu: empty GPU id"),
    ((T, "gpu-00", 5, 1e30), 'memory_used_bytes: implausibly large (over 1 PiB): "1e+30"'),
    ((T, "gpu-00", 5, -1), 'memory_used_bytes: negative: "-1"'),
    ((T, "gpu-00", 5, "lots"), 'memory_used_bytes: not a number: "lots"'),
    ((T, "gpu-00"), "expected 4 fields, got 2"),
])
def test_a_bad_value_anywhere_is_one_line_naming_file_line_and_field(
        data: Path, tmp_path: Path, row: tuple, needle: str) -> None:
    head = [(T + 10 * i, "gpu-00", 5, 1 << 30) for i in range(50)]
    tail = [(T + 10 * i, "gpu-00", 5, 1 << 30) for i in range(60, 70)]
    row = (*row, 1 << 30) if len(row) == 3 else row
    f = write_trace(tmp_path / "bad.csv", [*head, row, *tail], header="timestamp,gpu,util_percent,memory_used_bytes")
    before = snapshot(data)
    r = run_import(data, f)
    err = r.stderr.strip().splitlines()
    _refused(r, data, before, f"{f}:52: {needle}")
    assert len(err) == 2 and err[1] == f"accelmon: {f}: nothing imported"


@pytest.mark.parametrize(("make", "needle"), [
    (lambda p: p.mkdir() or p, "is a directory, not a CSV file"),
    (lambda p: p, "file not found"),
    (lambda p: write_trace(p, [(T, "g")], header="timestamp,gpu"), ":1: util_percent: missing column"),
    (lambda p: write_trace(p, [(T, "g", 5, 1)], header="timestamp,gpu,util_percent,mem"), ":1: mem: unknown column"),
    (lambda p: (p.write_text(""), p)[1], ":1: empty file"),
    (lambda p: write_trace(p, []), ":2: no data rows"),
])
def test_bad_paths_and_headers_are_one_line(data: Path, tmp_path: Path, make, needle: str) -> None:  # type: ignore[no-untyped-def]
    p = make(tmp_path / "trace.csv")
    before = snapshot(data)
    r = run_import(data, p)
    _refused(r, data, before, f"{p}", needle)
    assert len(r.stderr.strip().splitlines()) <= 2


def test_duplicate_rows_identical_are_dropped_and_counted_different_are_an_error(data: Path, tmp_path: Path) -> None:
    rows_ = grid(2, 20, t0=T)
    dup = write_trace(tmp_path / "dup.csv", [*rows_, rows_[3], rows_[7], rows_[3]])
    n0 = rows(data)
    r = run_import(data, dup)
    assert r.returncode == 0, r.stderr
    assert f"imported {len(rows_)} samples" in r.stdout and "3 identical duplicate row(s) dropped" in r.stdout
    assert rows(data) == n0 + len(rows_) == distinct_keys(data)

    t, g, u = rows_[5]
    clash = write_trace(tmp_path / "clash.csv", [*grid(2, 20, t0=T + 1000), (t + 1000, g, (u + 1) % 101)])
    before = snapshot(data)
    r = run_import(data, clash)
    line_first = 5 + 2
    line_dup = len(rows_) + 2
    _refused(r, data, before, f"{clash}:{line_dup}: timestamp: duplicate of line {line_first} for gpu \"{g}\"",
             f"util_percent {u} vs {(u + 1) % 101}")


def test_duplicates_are_found_across_batches_and_hash_buckets(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """In-process with tiny blocks and many buckets, so the two rows of a duplicate are read in
    different batches and spilled to different files: the check must still pair them."""
    from accelmon import importer
    from accelmon.importer import parse, partition
    from accelmon.store import Store

    monkeypatch.setattr(parse, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(partition, "CHUNK_ROWS", 500)
    monkeypatch.setattr(importer, "bucket_count", lambda size: 7)
    rows_ = grid(10, 300, t0=T)  # 3000 rows, ~200 per block
    t, g, u = rows_[10]
    iso = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    f = write_trace(tmp_path / "t.csv", [*rows_, rows_[10], (t, g, (u + 3) % 101)])
    st = Store(tmp_path / "data")
    with pytest.raises(importer.TraceError) as e:
        importer.import_trace(st, f)
    assert e.value.problems == [f'{f}:{len(rows_) + 3}: timestamp: duplicate of line {len(rows_) + 2} for gpu '
                                f'"{g}" at {iso} with different values '
                                f'(util_percent {u} vs {(u + 3) % 101})']
    assert rows(tmp_path / "data") == 0
    f = write_trace(tmp_path / "t2.csv", [*rows_, rows_[10], rows_[2999]])
    res = importer.import_trace(st, f)
    assert (res.rows, res.duplicates, res.gpus) == (len(rows_), 2, 10)
    assert rows(tmp_path / "data") == len(rows_) == distinct_keys(tmp_path / "data")


def test_a_day_boundary_and_iso_times_land_in_their_partitions(tmp_path: Path) -> None:
    f = write_trace(tmp_path / "t.csv", [("2026-12-05T23:59:50Z", "a", 10), ("2026-12-06T00:00:00+00:00", "a", 20),
                                         ("2026-12-06T01:00:00", "a", 30), (1796601600.25, "b", 40)])
    data = tmp_path / "data"
    r = run_import(data, f)
    assert r.returncode == 0, r.stderr
    got = Path(data)
    con = duckdb.connect()
    res = con.execute(f"SELECT date, count(*) FROM read_parquet('{got}/tables/gpu_sample/shard=*/date=*/*.parquet', "
                      "hive_partitioning=true) GROUP BY ALL ORDER BY 1").fetchall()
    assert [(str(d), n) for d, n in res] == [("2026-12-05", 1), ("2026-12-06", 2), ("2026-12-07", 1)]


def test_import_into_an_empty_data_dir_leaves_a_catalog_a_reader_can_open(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    f = write_trace(tmp_path / "t.csv", grid(3, 10, t0=T))
    r = run_import(data, f)
    assert r.returncode == 0, r.stderr
    con = duckdb.connect(str(data / "accelmon.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT gpu_uuid) FROM gpu_sample").fetchone() == (30, 3)
        daily = con.execute("SELECT gpu_uuid, samples, mean_util_percent FROM gpu_utilization_daily "
                            "ORDER BY gpu_uuid").fetchall()
        expect = {}
        for _t, g, u in grid(3, 10, t0=T):
            expect.setdefault(g, []).append(u)
        assert [(g, n) for g, n, _m in daily] == [(g, len(v)) for g, v in sorted(expect.items())]
        for g, _n, m in daily:
            assert m == pytest.approx(sum(expect[g]) / len(expect[g]))
        assert con.execute("SELECT count(*) FROM gpu_samples").fetchone() == (30,)
    finally:
        con.close()


def test_force_imports_again_and_the_log_is_written_only_after_publishing(data: Path, tmp_path: Path) -> None:
    f = write_trace(tmp_path / "t.csv", grid(2, 5, t0=T))
    n0 = rows(data)
    log0 = snapshot(data)["log"]
    r = run_import(data, f, extra_env={"IMPORT_TRACE_TEST_FAIL": "published:1"})  # disk full mid-publish
    assert r.returncode == 1 and "disk full" in r.stderr and "Traceback" not in r.stderr
    assert rows(data) == n0 and snapshot(data)["log"] == log0, "rolled back, log untouched"
    assert run_import(data, f).returncode == 0
    assert rows(data) == n0 + 10
    r = run_import(data, f, force=True)
    assert r.returncode == 0 and "imported 10 samples" in r.stdout
    assert rows(data) == n0 + 20
