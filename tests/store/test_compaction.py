"""Compaction on a store with every table populated: nothing lost, nothing duplicated, old
generations gc'd; a failing partition stops neither the other tables nor the gc."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from accelmon.daemon import housekeeping
from accelmon.daemon.state import DaemonState
from accelmon.store import TABLES, Store
from accelmon.store.sortkeys import sort_indices

from ._populate import multiset, populate


def _generations(store: Store, name: str, partition: str) -> list[Path]:
    return sorted(p for p in (store.gen_root(name) / f"date={partition}").iterdir() if p.is_dir())


def test_compaction_of_every_table_keeps_the_row_multiset_and_gc_removes_old_generations(tmp_path: Path) -> None:
    store = Store(tmp_path, gc_grace_seconds=0)
    populate(store)
    before = {name: multiset(store, name) for name in TABLES}
    assert all(sum(c.values()) == 2 * 3 * 20 for c in before.values())  # every table has its rows

    results = store.compact()

    compacted = {(r.table, r.partition) for r in results}
    expected = {(name, p) for name in TABLES for p in store.partitions(name) if p != "1970-01-01"}
    assert compacted == expected, f"not compacted: {sorted(expected - compacted)}"
    assert all(r.files_in == 3 and r.rows == 20 * 3 for r in results)
    for name in TABLES:
        assert multiset(store, name) == before[name], f"{name}: rows changed by compaction"
    store.gc()
    for name, p in expected:
        gens = _generations(store, name, p)
        assert len(gens) == 1 and gens[0].name == "g000002", f"{name} {p}: {gens}"
        assert [f.name.startswith("compact-") for f in store.files(name, p)] == [True]


def _reference_order(cols: list[list[Any]]) -> list[int]:
    """The definition: ascending per key, nulls first, ties keep arrival order (stable)."""
    return sorted(range(len(cols[0])), key=lambda i: tuple((v is not None, v if v is not None else 0)
                                                          for v in (c[i] for c in cols)))


@pytest.mark.parametrize("types", [
    (pa.string(), pa.int16(), pa.timestamp("ms", tz="UTC")),  # nvlink_sample's key shape
    (pa.string(), pa.string(), pa.int32()),                   # inv_vm_gpu's key shape
    (pa.int16(),),
    (pa.int64(), pa.float64()),
    (pa.float32(), pa.int64(), pa.int16()),
])
def test_sort_indices_orders_nulls_first_without_sentinels(types: tuple[pa.DataType, ...]) -> None:
    rng = random.Random(len(types))
    n = 400

    def value(t: pa.DataType) -> Any:
        if rng.random() < 0.2:
            return None
        if pa.types.is_integer(t):
            lo, hi = -(1 << (t.bit_width - 1)), (1 << (t.bit_width - 1)) - 1
            return rng.choice([lo, hi, -1, 0, 5, rng.randint(lo, hi)])
        if pa.types.is_floating(t):
            return rng.choice([-1e30, -0.5, 0.0, 3.25, float("inf"), float("-inf")])
        if pa.types.is_timestamp(t):
            return rng.choice([0, -86_400_000, 1_700_000_000_000, 1_700_000_000_001])
        return rng.choice(["", "a", "b", "GPU-9"])

    cols = [[value(t) for _ in range(n)] for t in types]
    data = pa.table({f"k{i}": pa.array(c, type=t) for i, (c, t) in enumerate(zip(cols, types, strict=True))})
    got = sort_indices(data, list(data.column_names)).tolist()
    assert got == _reference_order(cols)


def test_sort_indices_last_key_already_in_order_keeps_arrival_order() -> None:
    data = pa.table({"g": pa.array(["b", "a", None, "a", "b"]), "t": pa.array([1, 2, 3, 2, 0], pa.int64())})
    assert sort_indices(data, ["g", "t"]).tolist() == [2, 1, 3, 4, 0]
    assert np.array_equal(sort_indices(data, ["t"]), [4, 0, 1, 3, 2])


def _truncate(f: Path) -> None:
    raw = f.read_bytes()
    f.chmod(0o644)
    f.write_bytes(raw[: len(raw) // 2])


def test_daemon_compaction_job_survives_a_bad_file_and_always_gcs(tmp_path: Path) -> None:
    store = Store(tmp_path, gc_grace_seconds=0)
    store.quarantine_bad_files = True  # as the daemon sets it
    populate(store, files_per_partition=3, rows_per_file=10)
    bad_part = store.partitions("gpu_sample")[1]
    victim = store.files("gpu_sample", bad_part)[1]
    others = {name: multiset(store, name) for name in TABLES if name != "gpu_sample"}
    _truncate(victim)
    # gpu_sample is compacted first (schema order): with the old code its failure stopped the rest
    state = DaemonState()
    failures = housekeeping.compact(store, state)

    assert [(f.table, f.partition) for f in failures] == [("gpu_sample", bad_part)]
    assert state.store.compaction_errors_total == {"gpu_sample": 1}
    for name in TABLES:
        for p in store.partitions(name):
            if p == "1970-01-01" or (name, p) == ("gpu_sample", bad_part):
                continue
            assert len(store.files(name, p)) == 1, f"{name} {p} not compacted"
            assert len(_generations(store, name, p)) == 1, f"{name} {p}: old generation not gc'd"
        if name != "gpu_sample":
            assert multiset(store, name) == others[name]
    # the bad file is out of the partition, kept in quarantine under the path readers knew
    moved = tmp_path / "quarantine" / "tables" / "gpu_sample" / f"shard={store.shard}" / f"date={bad_part}" / victim.name
    assert moved.is_file() and not victim.exists()
    # the next run compacts what is left of that partition
    assert housekeeping.compact(store, state) == []
    assert len(store.files("gpu_sample", bad_part)) == 1
    assert sum(multiset(store, "gpu_sample").values()) == 2 * 3 * 10 - 10
