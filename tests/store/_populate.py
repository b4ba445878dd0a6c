"""Build a store with rows in every table of the schema (the schema is data: the rows are
generated from it), nulls in every nullable column including nullable sort keys, negative and
extreme integers in integer keys, several files per partition and two days."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from typing import Any

import pyarrow as pa

from accelmon.store import TABLES, Store

DAY0 = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)


def _value(typ: pa.DataType, rng: random.Random, i: int, ts: dt.datetime) -> Any:
    if pa.types.is_timestamp(typ):
        return ts
    if pa.types.is_string(typ):
        return rng.choice(["a", "b", "GPU-1", "GPU-2", "vm-7", "zz", ""])
    if pa.types.is_boolean(typ):
        return rng.random() < 0.5
    if pa.types.is_integer(typ):
        lo = -(1 << (typ.bit_width - 1))
        hi = (1 << (typ.bit_width - 1)) - 1
        return rng.choice([lo, hi, -1, 0, 1, 2, 3, i % 7])  # the type's extremes too
    if pa.types.is_floating(typ):
        return rng.choice([0.0, -1.5, 12.25, 99.0])
    if pa.types.is_list(typ):
        return [_value(typ.value_type, rng, i, ts) for _ in range(rng.randint(0, 3))]
    raise AssertionError(f"no generator for {typ}")


def rows_for(name: str, n: int, day: dt.datetime, rng: random.Random) -> list[dict[str, Any]]:
    t = TABLES[name]
    out = []
    for i in range(n):
        ts = day + dt.timedelta(minutes=rng.randint(0, 23 * 60))
        row = {}
        for c in t.columns:
            if c.name == t.partition_ts or pa.types.is_timestamp(c.type) and not c.nullable:
                row[c.name] = ts
            elif c.nullable and rng.random() < 0.3:
                row[c.name] = None  # nulls everywhere they are allowed, sort keys included
            else:
                row[c.name] = _value(c.type, rng, i, ts)
        out.append(row)
    return out


def populate(store: Store, *, files_per_partition: int = 3, rows_per_file: int = 20, seed: int = 7) -> None:
    rng = random.Random(seed)
    for name in TABLES:
        for d in range(2):
            for _ in range(files_per_partition):
                store.append(name, rows_for(name, rows_per_file, DAY0 + dt.timedelta(days=d), rng))


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def multiset(store: Store, name: str) -> Counter[tuple[Any, ...]]:
    con = store.connect()
    try:
        rows = con.execute(f"SELECT * EXCLUDE (date, shard) FROM {name}").fetchall()
    finally:
        con.close()
    return Counter(tuple(_hashable(v) for v in r) for r in rows)
