"""Sharded writers on one store root (docs/store.md, "Sharded writers / shared storage"): each
writer touches only its own shard; readers see the union; an unsharded store is migrated."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from accelmon.config import ConfigError, parse
from accelmon.store import TABLES, Store, StoreError, check
from accelmon.store import shards as sh
from accelmon.store.staging import Staging, recover

from ._populate import multiset, populate

T0 = dt.datetime(2026, 11, 25, 6, tzinfo=dt.UTC)


def _samples(store: Store, gpu: str, n: int, *, days: int = 2) -> None:
    for d in range(days):
        for k in range(n):
            store.append("gpu_sample", [{"ts": T0 + dt.timedelta(days=d, seconds=10 * k), "gpu_uuid": gpu,
                                         "source": "agent", "util_percent": 50.0}])


def _tree(root: Path, shard: str) -> dict[str, tuple[int, int, str]]:
    """Every entry under the shard's directories: (size, mtime, link target) - to prove untouched."""
    out = {}
    for top in (root / "tables", root / ".gen"):
        for p in top.glob(f"*/shard={shard}/**/*"):
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, os.readlink(p) if p.is_symlink() else "")
    return out


def _gpus_by_shard(store: Store) -> dict[str, set[str]]:
    con = store.connect()
    try:
        rows = con.execute("SELECT shard, gpu_uuid FROM gpu_sample").fetchall()
    finally:
        con.close()
    out: dict[str, set[str]] = {}
    for s, g in rows:
        out.setdefault(s, set()).add(g)
    return out


def test_each_writer_touches_only_its_shard_and_readers_see_the_union(tmp_path: Path) -> None:
    a = Store(tmp_path, shard="vc-a", gc_grace_seconds=0)
    b = Store(tmp_path, shard="vc-b", gc_grace_seconds=0)
    _samples(a, "GPU-A", 3)
    _samples(b, "GPU-B", 3)
    reader = Store(tmp_path, shard="reader")  # a reader never creates its shard
    assert _gpus_by_shard(reader) == {"vc-a": {"GPU-A"}, "vc-b": {"GPU-B"}}
    assert not (tmp_path / "tables" / "gpu_sample" / "shard=reader").exists()
    assert reader.shards() == ["vc-a", "vc-b"]
    assert len(reader.files("gpu_sample")) == len(a.own_files("gpu_sample")) + len(b.own_files("gpu_sample"))

    b_before = _tree(tmp_path, "vc-b")
    res = a.compact(["gpu_sample"])
    assert {r.partition for r in res} == {"2026-11-25", "2026-11-26"}
    assert all(len(a.own_files("gpu_sample", p)) == 1 for p in ("2026-11-25", "2026-11-26"))
    assert a.drop_partitions_before("gpu_sample", dt.date(2026, 11, 26)) == ["2026-11-25"]
    a.gc(now=dt.datetime(2100, 1, 1).timestamp())
    assert _tree(tmp_path, "vc-b") == b_before, "compaction, retention and gc of A changed shard B"
    assert "2026-11-25" in b.own_partitions("gpu_sample") and "2026-11-25" in reader.partitions("gpu_sample")

    con = reader.connect()
    per = dict(con.execute("SELECT gpu_uuid, count(*) FROM gpu_sample WHERE date > '1970-01-01' GROUP BY 1").fetchall())
    con.close()
    assert per == {"GPU-A": 3, "GPU-B": 6}  # A kept its second day; B both

    # B's own compaction and gc still work on B (A's retired generations are A's business)
    b.compact(["gpu_sample"])
    b.gc(now=dt.datetime(2100, 1, 1).timestamp())
    assert all(len(list((b.gen_root("gpu_sample") / f"date={p}").iterdir())) == 1
               for p in b.own_partitions("gpu_sample"))


def test_every_table_of_two_shards_reads_as_the_union_and_views_bind(tmp_path: Path) -> None:
    a = Store(tmp_path, shard="a")
    b = Store(tmp_path, shard="2024")  # all digits: the hive key must stay a string
    populate(a, files_per_partition=1, rows_per_file=5, seed=1)
    populate(b, files_per_partition=1, rows_per_file=5, seed=2)
    union = Store(tmp_path, shard="x")
    for name in TABLES:
        assert sum(multiset(union, name).values()) == 2 * (2 * 1 * 5), name  # 2 shards x 2 days x 1 file x 5
    con = union.connect()
    try:
        assert con.execute("SELECT typeof(shard) FROM gpu_sample LIMIT 1").fetchone()[0] == "VARCHAR"
        assert sorted(r[0] for r in con.execute("SELECT DISTINCT shard FROM gpu_sample").fetchall()) == ["2024", "a"]
        for v in ("hosts", "vms", "host_gpus", "latest_findings"):  # the convenience views keep their columns
            assert "shard" not in [d[0] for d in con.execute(f"SELECT * FROM {v} LIMIT 0").description]
    finally:
        con.close()
    assert union.ensure_catalog()
    cat = duckdb.connect(str(union.catalog_path), read_only=True)
    assert cat.execute("SELECT count(*), count(DISTINCT shard) FROM inv_vm").fetchone() == (20, 2)
    cat.close()
    assert (tmp_path / "tables" / "inv_vm" / "shard=x" / "date=1970-01-01").is_symlink()  # its writer's epoch file


def test_quarantine_and_repair_never_touch_another_shard(tmp_path: Path) -> None:
    a = Store(tmp_path, shard="vc-a")
    b = Store(tmp_path, shard="vc-b")
    _samples(a, "GPU-A", 2, days=1)
    _samples(b, "GPU-B", 2, days=1)
    bad = b.own_files("gpu_sample", "2026-11-25")[0]
    bad.write_bytes(bad.read_bytes()[:20])
    a.quarantine_bad_files = True  # as the daemon sets it
    con = a.connect()
    assert dict(con.execute("SELECT gpu_uuid, count(*) FROM gpu_sample GROUP BY 1").fetchall()) == \
        {"GPU-A": 2, "GPU-B": 1}  # the bad file is left out of A's view, the rest answers
    con.close()
    assert bad.exists(), "A moved a file of shard B"
    res = check.check(a)
    assert [(x.shard, x.path) for x in res.bad_files] == [("vc-b", bad)]
    assert "shard=vc-b" in str(res.bad_files[0].shown(a))
    fixed = a.repair(res)
    assert fixed.quarantined == [] and [x.path for x in fixed.not_own] == [bad] and bad.exists()
    with pytest.raises(StoreError, match="belongs to shard vc-b"):
        check.quarantine(a, res.bad_files[0])
    fixed = b.repair()
    assert fixed.quarantined == [tmp_path / "quarantine" / "tables" / "gpu_sample" / "shard=vc-b" / "date=2026-11-25"
                                 / bad.name]
    assert check.check(a).ok


def _legacy_store(root: Path) -> Counter[tuple[object, ...]]:
    """A store of the unsharded layout (tables/<t>/date=<day> -> .gen/<t>/date=<day>/g…), written as
    accelmon did before shards: build it in a shard, then move it into the old places."""
    s = Store(root, shard="old")
    populate(s, files_per_partition=2, rows_per_file=4, seed=5)
    s.compact(["gpu_sample"])  # a second generation in some partitions
    before = {name: multiset(s, name) for name in ("gpu_sample", "inv_vm")}
    for name in TABLES:
        for link in sorted((root / "tables" / name / "shard=old").glob("date=*")):
            gen = link.resolve()
            legacy_gen_parent = root / ".gen" / name / link.name
            os.rename(gen.parent, legacy_gen_parent)
            new = root / "tables" / name / link.name
            os.symlink(os.path.relpath(legacy_gen_parent / gen.name, new.parent), new)
            link.unlink()
        (root / "tables" / name / "shard=old").rmdir()
        for p in (root / ".gen" / name / "shard=old").iterdir():
            p.unlink()
        (root / ".gen" / name / "shard=old").rmdir()
    (root / "shards" / "old.json").unlink()
    return before["gpu_sample"]


def test_an_unsharded_store_is_migrated_into_the_writers_shard_on_open(tmp_path: Path) -> None:
    before = _legacy_store(tmp_path)
    assert sh.legacy_partitions(tmp_path, "gpu_sample")
    s = Store(tmp_path, shard="vc-a")
    assert not any(sh.legacy_partitions(tmp_path, t) for t in TABLES)
    assert multiset(s, "gpu_sample") == before  # every row, once
    assert _gpus_by_shard(s).keys() == {"vc-a"}
    assert not list((tmp_path / ".gen" / "gpu_sample").glob("date=*")), "generations moved into the shard"
    s.append("gpu_sample", [{"ts": T0, "gpu_uuid": "GPU-new", "source": "agent"}])  # and it keeps working
    assert s.compact(["gpu_sample"]) and sum(multiset(s, "gpu_sample").values()) == sum(before.values()) + 1
    Store(tmp_path, shard="vc-a")  # a second open finds nothing to migrate
    assert sum(multiset(s, "gpu_sample").values()) == sum(before.values()) + 1


def test_a_shard_belongs_to_one_host(tmp_path: Path) -> None:
    s = Store(tmp_path, shard="vc-a")
    _samples(s, "GPU-A", 1, days=1)
    assert json.loads((tmp_path / "shards" / "vc-a.json").read_text())["host"] == socket.gethostname()
    Store(tmp_path, shard="vc-a").append("gpu_sample", [{"ts": T0, "gpu_uuid": "G", "source": "agent"}])  # same host
    (tmp_path / "shards" / "vc-b.json").write_text(json.dumps({"shard": "vc-b", "host": "other-box"}))
    other = Store(tmp_path, shard="vc-b")  # opening to read is fine
    with pytest.raises(StoreError) as e:
        other.append("gpu_sample", [{"ts": T0, "gpu_uuid": "G", "source": "agent"}])
    msg = str(e.value)
    assert "\n" not in msg and "shard vc-b" in msg and "other-box" in msg and "vc-b.json" in msg
    assert not (tmp_path / "tables" / "gpu_sample" / "shard=vc-b").exists()


def test_shard_names_are_validated_in_config_and_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="shard"):
        Store(tmp_path, shard="../x")
    with pytest.raises(ConfigError) as e:
        parse({"store": {"shard": "Site A"}}, "accelmon.toml")
    assert any("store.shard" in ln and "Site A" in ln for ln in e.value.lines), e.value.lines
    assert parse({"store": {"shard": "site_a-1"}}, "x").shard == "site_a-1"
    vc = {"url": "https://VC01.Example.com", "user": "u", "password": "p"}
    assert parse({"vcenter": [vc]}, "x").shard == "vc01-example-com"  # one vCenter: its name
    assert parse({"vcenter": [{**vc, "name": "Lab West"}]}, "x").shard == "lab-west"
    two = parse({"vcenter": [vc, {**vc, "url": "https://vc02"}]}, "x")
    assert two.shard == sh.sanitize(socket.gethostname().split(".")[0])  # several: the host name
    assert sh.sanitize("///") == "default" and sh.SHARD_RE.match(sh.sanitize("x" * 200))


def test_recover_leaves_another_shards_staging_alone(tmp_path: Path) -> None:
    a = Store(tmp_path, shard="vc-a")
    b = Store(tmp_path, shard="vc-b")
    stg = Staging(b, "b-import")
    os.close(stg._lock_fd or -1)  # as if its process were on another host: no lock visible here
    stg._lock_fd = None
    assert recover(a) == [] and stg.dir.is_dir()
    assert stg.dir.name.startswith("vc-b.")
    assert [m for m in recover(b) if "b-import" in m] and not stg.dir.exists()
