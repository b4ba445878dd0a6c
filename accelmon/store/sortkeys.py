"""Row order for compaction: by a table's sort key, nulls first, stable.

Every key column is turned into integer codes that order like the column. A null is code -1
and every value a code >= 0 (its dense rank among the column's distinct values), so no value
of any width or sign can collide with the null code: there is no sentinel value. Only the last
key (usually the timestamp) keeps its raw values when it has no nulls - that is what makes the
common case (appends arrive in time order per GPU) a single stable radix pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MAX_RADIX = 1 << 62  # above this the combined lead key could overflow int64: lexsort instead


def _dense_codes(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """-1 for null, else the value's rank among the distinct non-null values (0, 1, …)."""
    n = len(col)
    valid = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), dtype=bool)
    codes = np.full(n, -1, dtype=np.int64)
    if not valid.any():
        return codes
    values = pc.drop_null(col).to_numpy(zero_copy_only=False)
    _uniq, inverse = np.unique(values, return_inverse=True)
    codes[valid] = inverse.reshape(-1)
    return codes


def key_codes(col: pa.ChunkedArray | pa.Array, *, raw_ok: bool = False) -> np.ndarray:
    """Codes that sort like the column with nulls first.

    Dense codes (-1 = null, ranks >= 0) unless ``raw_ok`` and the column has no null, in which
    case numbers and times are returned as they are (int64 or float64)."""
    typ = col.type
    if pa.types.is_dictionary(typ):
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        dictionary = arr.dictionary
        rank = np.empty(len(dictionary), dtype=np.int64)
        rank[np.asarray(pc.array_sort_indices(dictionary).to_numpy())] = np.arange(len(dictionary))
        idx = np.asarray(arr.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        return np.where(idx < 0, -1, rank[np.clip(idx, 0, None)]) if len(rank) else idx
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_boolean(typ):
        uniq = pc.unique(col).drop_null()
        uniq = uniq.take(pc.array_sort_indices(uniq))
        codes = pc.index_in(col, value_set=uniq).fill_null(-1)
        return np.asarray(codes.to_numpy(), dtype=np.int64)
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ) or pa.types.is_duration(typ):
        col = col.cast(pa.int64())
    if raw_ok and col.null_count == 0:
        dtype = np.float64 if pa.types.is_floating(col.type) else np.int64
        return np.asarray(col.to_numpy(), dtype=dtype)  # widening only (int16/int32 -> int64)
    return _dense_codes(col)


def sort_indices(data: pa.Table, keys: Sequence[str]) -> np.ndarray:
    """Row order for compaction: by ``keys``, nulls first (last key typically the timestamp).

    Fast path: a stable radix sort on the leading keys keeps arrival order within a group;
    appended data arrives in time order, so the last key is usually already sorted. Checked,
    with a full lexsort as the fallback."""
    codes = [key_codes(data.column(k), raw_ok=(i == len(keys) - 1)) for i, k in enumerate(keys)]
    if len(codes) == 1:
        return np.argsort(codes[0], kind="stable")
    lead = codes[0] + 1  # dense codes: 0 = null, 1.. = values
    radix = int(lead.max(initial=0)) + 1
    for c in codes[1:-1]:
        base = int(c.max(initial=0)) + 2
        radix *= base
        if radix >= _MAX_RADIX:
            return np.lexsort(tuple(reversed(codes)))
        lead = lead * base + (c + 1)
    idx = np.argsort(lead, kind="stable")
    last = codes[-1][idx]
    lead_s = lead[idx]
    same = lead_s[1:] == lead_s[:-1]
    if np.all(last[1:][same] >= last[:-1][same]):
        return idx
    return np.lexsort(tuple(reversed(codes)))
