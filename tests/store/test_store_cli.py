"""A store that one bad file, a crash or a reader can't break - through the real CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import pytest

from accelmon.sqlshell import readonly_connection
from accelmon.store import TABLES, Store
from accelmon.store.catalog import VIEWS

from ._populate import populate

T0 = dt.datetime(2026, 11, 25, 8, tzinfo=dt.UTC)


def accelmon(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI as a user runs it (as tests/cli/test_cli.py does)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELMON_")}
    return subprocess.run([sys.executable, "-m", "accelmon.cli", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, env=env, timeout=120, input="")


def _samples(data: Path, files: int = 4, rows: int = 5) -> Store:
    store = Store(data)
    for f in range(files):
        store.append("gpu_sample", [{"ts": T0 + dt.timedelta(seconds=60 * f + i), "gpu_uuid": f"GPU-{i % 2}",
                                     "source": "agent", "util_percent": float(i)} for i in range(rows)])
    return store


def _count(data: Path, table: str = "gpu_sample") -> int:
    r = accelmon("sql", "-f", "json", f"SELECT count(*) AS n FROM {table}", data_dir=data)
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)[0]["n"])


def _truncate(f: Path) -> None:
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])


def _snapshot(data: Path) -> dict[str, tuple[int, int]]:
    """Every entry under the data dir with its size and mtime (symlinks not followed)."""
    out = {}
    for p in sorted(data.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(data))] = (st.st_size, st.st_mtime_ns)
    return out


def test_one_truncated_file_is_reported_by_name_and_quarantined_queries_go_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = _samples(data)
    bad = store.files("gpu_sample")[-2]
    part = bad.parent.parent.name  # date=…
    shown = data / "tables" / "gpu_sample" / f"shard={store.shard}" / part / bad.name
    _truncate(bad)

    r = accelmon("sql", "SELECT 1", data_dir=data)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count(str(shown)) == 1, r.stderr  # reported once, by the name readers see
    assert _count(data) == 3 * 5  # the rest still answers

    r = accelmon("compact", data_dir=data)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if str(shown) in ln] == [ln for ln in r.stderr.splitlines()]
    assert len(r.stderr.strip().splitlines()) == 1 and "store check --repair" in r.stderr

    r = accelmon("report", "--since", "all", "--out", str(tmp_path / "report"), data_dir=data)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (tmp_path / "report" / "report.html").is_file()

    r = accelmon("store", "check", data_dir=data)
    assert r.returncode == 1
    assert r.stdout.splitlines()[0].startswith(f"{shown}: unreadable Parquet file")
    assert bad.exists(), "check alone changes nothing"

    r = accelmon("store", "check", "--repair", data_dir=data)
    assert r.returncode == 0, r.stderr
    moved = data / "quarantine" / "tables" / "gpu_sample" / f"shard={store.shard}" / part / bad.name
    assert moved.is_file() and not bad.exists() and not shown.exists()
    assert f"{shown}: moved to {moved}" in r.stdout and "catalog rebuilt" in r.stdout
    assert accelmon("store", "check", data_dir=data).returncode == 0
    r = accelmon("sql", "SELECT count(*) FROM gpu_sample", data_dir=data)
    assert r.returncode == 0 and r.stderr == ""  # nothing left to report
    assert _count(data) == 3 * 5
    assert accelmon("compact", data_dir=data).returncode == 0
    assert _count(data) == 3 * 5
    con = duckdb.connect(str(data / "accelmon.duckdb"), read_only=True)  # the rebuilt catalog reads
    assert con.execute("SELECT count(*) FROM gpu_sample").fetchone()[0] == 3 * 5
    con.close()


def test_leftover_tmp_link_of_a_killed_swap_is_cleaned_up_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = _samples(data)
    # what a kill between symlink() and rename() in Store._swap_link leaves behind
    part = store.partitions("gpu_sample")[-1]
    link = data / "tables" / "gpu_sample" / f"shard={store.shard}" / f".tmp-link-{uuid.uuid4().hex}"
    target = os.path.relpath(store.files("gpu_sample", part)[0].parent, link.parent)
    os.symlink(target, link)
    r = accelmon("sql", "-f", "json", "SELECT count(*) AS n FROM gpu_sample", data_dir=data)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert json.loads(r.stdout)[0]["n"] == 4 * 5  # a reader never reads it (nor, being a reader, removes it)
    r = accelmon("compact", data_dir=data)  # the shard's next writer does
    assert r.returncode == 0, r.stderr
    assert not link.is_symlink() and str(link) in r.stderr
    assert _count(data) == 4 * 5


def test_store_check_lists_a_leftover_link_it_cannot_remove_on_a_read_only_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = _samples(data, files=1)
    link = data / "tables" / "gpu_sample" / f"shard={store.shard}" / f".tmp-link-{uuid.uuid4().hex}"
    os.symlink(os.path.relpath(store.files("gpu_sample")[0].parent, link.parent), link)
    r = _read_only_run(data, "store", "check")
    assert r.returncode == 1 and f"{link}: leftover of an interrupted partition swap" in r.stdout, r.stderr
    r = _read_only_run(data, "sql", "-f", "csv", "SELECT count(*) AS n FROM gpu_sample")
    assert r.returncode == 0 and r.stdout.splitlines() == ["n", "5"], r.stderr  # the link is not read


@pytest.fixture(scope="module")
def full_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("full") / "data"
    store = Store(data)
    populate(store, files_per_partition=2, rows_per_file=12)
    store.ensure_catalog()
    return data


def test_sql_cannot_change_the_store(full_store: Path) -> None:
    data = full_store
    before = _snapshot(data)
    n = _count(data)
    part = next(p for p in sorted((data / "tables" / "gpu_sample").glob("shard=*/date=*"))
                if p.name != "date=1970-01-01")
    victim = next(part.glob("*.parquet"))
    attacks = [
        f"COPY (SELECT * FROM gpu_sample LIMIT 12) TO '{victim}' (FORMAT parquet)",  # replace real rows
        f"COPY (SELECT * EXCLUDE (date) FROM gpu_sample LIMIT 3) TO '{part}/part-fake.parquet' (FORMAT parquet)",
        f"COPY gpu_sample TO '{data}/tables/x.csv'",
        f"EXPORT DATABASE '{data}/.gen/export'",
        f"ATTACH '{data}/accelmon.duckdb' AS cat",
        f"ATTACH '{data}/accelmon.duckdb' AS cat; CREATE OR REPLACE VIEW cat.gpu_sample AS SELECT 1",
        "CREATE OR REPLACE VIEW gpu_sample AS SELECT 1 AS x",
        "CREATE TABLE t AS SELECT 1",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{part}/p.parquet'",
        "SELECT 1; COPY (SELECT 1) TO '/tmp/accelmon-should-not-exist.csv'",
        "INSTALL httpfs",
    ]
    for q in attacks:
        r = accelmon("sql", q, data_dir=data)
        assert r.returncode == 1, f"{q!r} ran: {r.stdout}"
        assert r.stderr.startswith("accelmon: sql:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert _snapshot(data) == before, "the store changed"
    assert _count(data) == n
    assert not Path("/tmp/accelmon-should-not-exist.csv").exists()


@pytest.mark.parametrize("q", [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd', sep = ':')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_text('{data}/tables/../../../../etc/passwd')",
    "SELECT size FROM read_blob('{data}/accelmon.duckdb')",  # the catalog: not an allowed directory
])
def test_sql_reads_nothing_outside_the_store(full_store: Path, q: str) -> None:
    r = accelmon("sql", q.format(data=full_store), data_dir=full_store)
    assert r.returncode == 1 and "root:" not in r.stdout, r.stdout
    assert r.stderr.startswith("accelmon: sql:") and "Traceback" not in r.stderr


def test_readonly_connection_settings_are_locked_by_duckdb(full_store: Path) -> None:
    """The same limits hold below the statement check: DuckDB itself refuses."""
    with readonly_connection(Store(full_store)) as con:
        for q in ("SET enable_external_access = true", "SET allowed_directories = ['/']",
                  "SET lock_configuration = false", "SELECT * FROM read_text('/etc/passwd')",
                  f"ATTACH '{full_store}/accelmon.duckdb' AS cat"):
            with pytest.raises(duckdb.Error):
                con.execute(q)
        assert con.execute("SELECT current_setting('enable_external_access')").fetchone()[0] is False


def test_sql_every_view_answers(full_store: Path) -> None:
    for name in [*TABLES, *VIEWS]:
        r = accelmon("sql", "-f", "json", f"SELECT count(*) AS n FROM {name}", data_dir=full_store)
        assert r.returncode == 0, f"{name}: {r.stderr}"
    for q in ("DESCRIBE gpu_sample", "SHOW TABLES", "SUMMARIZE nvlink_sample", "FROM inv_vm_gpu LIMIT 1",
              "EXPLAIN SELECT * FROM vm_gpu", "WITH x AS (SELECT 1 AS a) SELECT * FROM x"):
        r = accelmon("sql", q, data_dir=full_store)
        assert r.returncode == 0, f"{q}: {r.stderr}"
    assert _count(full_store, "nvlink_sample") == 2 * 2 * 12


def _read_only_run(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on a data dir this process cannot write: a read-only bind mount when run as root
    (root ignores permission bits), the permission bits otherwise."""
    cmd = [sys.executable, "-m", "accelmon.cli", "--data-dir", str(data), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELMON_")}
    if os.geteuid() == 0:
        d = shlex.quote(str(data))
        script = f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && exec {shlex.join(cmd)}"
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    else:
        for p in [data, *data.rglob("*")]:
            if not p.is_symlink():
                p.chmod(p.stat().st_mode & ~0o222)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, input="")


def test_sql_works_on_a_read_only_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _samples(data)
    before = _snapshot(data)
    r = _read_only_run(data, "sql", "-f", "csv", "SELECT count(*) AS n, count(DISTINCT gpu_uuid) AS g FROM gpu_sample")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["n,g", "20,2"]
    r = _read_only_run(data, "sql", "SELECT * FROM vm_gpu")  # views over tables never written
    assert r.returncode == 0, r.stderr
    r = _read_only_run(data, "store", "check")
    assert r.returncode == 0, r.stderr
    r = _read_only_run(data, "compact")  # a writing verb on it: one line, no traceback
    assert r.returncode == 2 and "not writable" in r.stderr and "Traceback" not in r.stderr
    assert _snapshot(data) == before
