"""The interval arithmetic of :mod:`accelmon.analytics.samples`: one unit's sorted rows → sparse
sums per (key, held, Δt bucket, utilization bin), the per-series stats and the heatmap cells.

The *key* is the series id, or with bucketing (rollups, :mod:`accelmon.analytics.rollup`) the series id
and the bucket (UTC hour) of the interval's **end sample**: ``sid * nbk + (t_end - start) // bucket``.
``count_from_ms`` drops the intervals (and samples) ending before it, so a window can be answered in
pieces whose sums are exact (docs/store.md, "Rollups")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from accelmon.analytics.sample_units import VALUE_COLS, Arrays, sort_unit

ALLOC_FB_BYTES = 1 << 30

NBINS = 102  # bin 0: idle (exactly 0 %); bin b>0: floor(util) = b-1, 0..100

LN_DQ = 100.0  # Δt histogram: dq = round(100 · ln(Δt ms)), ~1 % wide buckets

AGG_SCHEMA = {
    "sid": pl.Int64, "held": pl.Boolean, "dq": pl.Int32, "bin": pl.Int16, "n": pl.Int64,
    "dt_ms": pl.Float64, "cov_ms": pl.Float64, "busy_ms": pl.Float64, "alloc_ms": pl.Float64,
    "alloc_busy_ms": pl.Float64, "e_ctr_mj": pl.Float64, "e_pow_mj": pl.Float64,
}

STAT_SCHEMA = {
    "sid": pl.Int64, "samples": pl.Int64, "first_ms": pl.Int64, "last_ms": pl.Int64,
    "fb_max_bytes": pl.Int64, "fb_total_bytes": pl.Int64, "bios_id": pl.Int64,
}

HEAT_SCHEMA = {"sid": pl.Int64, "cell": pl.Int32, "cov_ms": pl.Float64, "busy_ms": pl.Float64}


@dataclass(frozen=True)
class Ctx:
    """What every unit's computation shares: heatmap cells, the counting start and the buckets."""

    start_ms: int
    cell_ms: int
    ncells: int
    count_from_ms: int | None = None  # intervals/samples ending before this are not counted
    bucket_ms: int | None = None  # group by (series, bucket of the end sample) instead of series
    nbk: int = 1

    def key(self, sid: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.bucket_ms is None:
            return sid
        key: np.ndarray = sid * self.nbk + (t - self.start_ms) // self.bucket_ms
        return key

    def counted(self, t: np.ndarray) -> np.ndarray | None:
        return None if self.count_from_ms is None else t >= self.count_from_ms


@dataclass
class UnitResult:
    agg: pl.DataFrame
    stats: pl.DataFrame
    heat: pl.DataFrame
    bounds: dict[str, np.ndarray]  # first/last row of each series in the unit
    rows: int


def _increase(x: np.ndarray) -> np.ndarray:
    d = np.diff(x)
    return np.where(d < 0, x[1:], d)


def _intervals(a: Arrays, same: np.ndarray, ctx: Ctx) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Aggregate the intervals ending at rows where ``same`` is True (row k continues row k-1)."""
    v, ok = a.vals, a.valid
    start_ms, cell_ms, ncells = ctx.start_ms, ctx.cell_ms, ctx.ncells
    m = same[1:]
    counted = ctx.counted(a.t[1:])
    if counted is not None:
        m = m & counted
    if not m.any():
        return pl.DataFrame(schema=AGG_SCHEMA), pl.DataFrame(schema=HEAT_SCHEMA)
    sid = a.sid[1:]
    key = ctx.key(sid, a.t[1:])
    if all(ok[c].all() for c in ("busy_ms_total", "idle_ms_total", "energy_millijoules_total", "fb_used_bytes")):
        return _intervals_counters(a, m, sid, key, ctx)
    dtm = np.diff(a.t).astype(np.float64)
    ctr = m & ok["busy_ms_total"][1:] & ok["busy_ms_total"][:-1] & ok["idle_ms_total"][1:] & ok["idle_ms_total"][:-1]
    held = m & ~ctr & ok["util_percent"][:-1]
    db = _increase(v["busy_ms_total"]).astype(np.float64)
    di = _increase(v["idle_ms_total"]).astype(np.float64)
    tot = db + di
    u0 = v["util_percent"][:-1].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cu = np.where(tot > 0, 100.0 * db / tot, 0.0)
    ui = np.where(ctr, cu, u0)
    cov = np.where(ctr, np.where(tot > 0, np.minimum(tot, dtm), 0.0), np.where(held, dtm, 0.0))
    idle = np.where(ctr, db == 0, u0 == 0)
    b = np.where(idle, 0, np.minimum(np.floor(ui), 100).astype(np.int64) + 1)
    busy = cov * ui / 100.0
    alloc = np.where(ok["fb_used_bytes"][:-1] & (v["fb_used_bytes"][:-1] >= ALLOC_FB_BYTES), cov, 0.0)
    alloc_busy = np.where(alloc > 0, busy, 0.0)  # busy time of the allocated intervals
    eok = m & ok["energy_millijoules_total"][1:] & ok["energy_millijoules_total"][:-1]
    e_ctr = np.where(eok, _increase(v["energy_millijoules_total"]), 0).astype(np.float64)
    pok = m & ~eok & ok["power_milliwatts"][:-1]
    e_pow = np.where(pok, v["power_milliwatts"][:-1] * cov / 1000.0, 0.0)
    frames = []
    # counter intervals: dense bincount over (local series, bin)
    if ctr.any():
        idx = np.flatnonzero(ctr)
        frames.append(_sparse(key[idx], np.zeros(len(idx), np.int64), b[idx], False, dtm[idx],
                              cov[idx], busy[idx], alloc[idx], alloc_busy[idx], e_ctr[idx], e_pow[idx]))
    if held.any():
        idx = np.flatnonzero(held)
        dq = np.rint(LN_DQ * np.log(np.maximum(dtm[idx], 1.0))).astype(np.int64)
        frames.append(_sparse(key[idx], dq, b[idx], True, dtm[idx], cov[idx], busy[idx], alloc[idx],
                              alloc_busy[idx], e_ctr[idx], e_pow[idx]))
    # energy-counter intervals with neither busy/idle counters nor utilization still count
    rest = m & ~ctr & ~held & eok
    if rest.any():
        idx = np.flatnonzero(rest)
        z = np.zeros(len(idx))
        frames.append(_sparse(key[idx], np.full(len(idx), -1, np.int64), np.full(len(idx), -1, np.int64),
                              False, dtm[idx], z, z, z, z, e_ctr[idx], z))
    agg = pl.concat(frames) if frames else pl.DataFrame(schema=AGG_SCHEMA)
    # heatmap: intervals no longer than a cell, by the cell their end falls in
    hm = (ctr | held) & (dtm <= cell_ms)
    heat = pl.DataFrame(schema=HEAT_SCHEMA)
    if hm.any():
        idx = np.flatnonzero(hm)
        cell = np.clip((a.t[1:][idx] - start_ms) // cell_ms, 0, ncells - 1)
        heat = _sparse_heat(sid[idx], cell, cov[idx], busy[idx], ncells)
    return agg, heat


def _intervals_counters(a: Arrays, m: np.ndarray, sid: np.ndarray, key: np.ndarray,
                        ctx: Ctx) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Fast path of :func:`_intervals` for units where every row has busy/idle/energy counters and
    framebuffer (the agent's normal case): the same definitions with fewer passes over memory."""
    v = a.vals
    start_ms, cell_ms, ncells = ctx.start_ms, ctx.cell_ms, ctx.ncells
    dti = np.diff(a.t)
    db = _increase(v["busy_ms_total"])
    tot = db + _increase(v["idle_ms_total"])
    cov = np.minimum(tot, dti).astype(np.float64)
    cov[~m] = 0.0
    ui = np.divide(100.0 * db, tot, out=np.zeros(len(tot)), where=tot > 0)
    b = np.minimum(ui.astype(np.int64), 100) + 1
    b[db == 0] = 0
    b[~m] = -2  # not an interval (series boundary): dropped by _sparse
    busy = cov * ui / 100.0
    held_fb = v["fb_used_bytes"][:-1] >= ALLOC_FB_BYTES
    alloc = cov * held_fb
    alloc_busy = busy * held_fb
    e_ctr = _increase(v["energy_millijoules_total"]).astype(np.float64)
    e_pow = np.zeros(len(cov))
    agg = _sparse(key, np.zeros(len(sid), np.int64), b, False, dti.astype(np.float64), cov, busy, alloc, alloc_busy,
                  e_ctr, e_pow)
    hm = m & (dti <= cell_ms)
    cell = np.clip((a.t[1:] - start_ms) // cell_ms, 0, ncells - 1)
    heat = _sparse_heat(sid, cell, np.where(hm, cov, 0.0), np.where(hm, busy, 0.0), ncells)
    return agg, heat


def _local(sid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct series and each row's index among them (O(n) when sorted, as units are)."""
    if len(sid) == 0:
        return sid, sid
    d = np.diff(sid)
    if (d >= 0).all():
        new = np.concatenate(([True], d != 0))
        return sid[new], np.cumsum(new) - 1
    uniq, inv = np.unique(sid, return_inverse=True)
    return uniq, inv


def _sparse(sid: np.ndarray, dq: np.ndarray, b: np.ndarray, held: bool, *w: np.ndarray) -> pl.DataFrame:
    uniq, loc = _local(sid)
    if held or (dq != 0).any():
        dqu, dqi = np.unique(dq, return_inverse=True)
    else:
        dqu, dqi = np.zeros(1, np.int64), np.zeros(len(dq), np.int64)
    bb = b + 2  # -2 (not an interval: dropped) → 0, -1 (energy only) → 1
    nb = NBINS + 2
    key = (loc * len(dqu) + dqi) * nb + bb
    size = len(uniq) * len(dqu) * nb
    if size > 4 * len(key) + 1024:  # sparse keys: compress
        ku, kinv = np.unique(key, return_inverse=True)
    else:
        ku, kinv = None, key
    nbin = len(ku) if ku is not None else size
    n = np.bincount(kinv, minlength=nbin)
    sums = [np.bincount(kinv, x, minlength=nbin) for x in w]
    nz = np.flatnonzero(n)
    k = ku[nz] if ku is not None else nz
    keep = (k % nb) != 0
    nz, k = nz[keep], k[keep]
    return pl.DataFrame(
        {
            "sid": uniq[k // (len(dqu) * nb)],
            "held": np.full(len(nz), held),
            "dq": dqu[(k // nb) % len(dqu)].astype(np.int32),
            "bin": ((k % nb) - 2).astype(np.int16),
            "n": n[nz].astype(np.int64),
            **{name: s[nz] for name, s in zip(list(AGG_SCHEMA)[5:], sums, strict=True)},
        },
        schema=AGG_SCHEMA,
    )


def _sparse_heat(sid: np.ndarray, cell: np.ndarray, cov: np.ndarray, busy: np.ndarray, ncells: int) -> pl.DataFrame:
    uniq, loc = _local(sid)
    key = loc * ncells + cell
    size = len(uniq) * ncells
    c = np.bincount(key, cov, minlength=size)
    bz = np.bincount(key, busy, minlength=size)
    nz = np.flatnonzero(c)
    return pl.DataFrame(
        {"sid": uniq[nz // ncells], "cell": (nz % ncells).astype(np.int32), "cov_ms": c[nz], "busy_ms": bz[nz]},
        schema=HEAT_SCHEMA,
    )


def _process(a: Arrays, ctx: Ctx) -> UnitResult:
    a = sort_unit(a)
    n = len(a.sid)
    same = np.zeros(n, bool)
    same[1:] = a.sid[1:] == a.sid[:-1]
    agg, heat = _intervals(a, same, ctx)
    starts = np.flatnonzero(~same)
    ends = np.append(starts[1:] - 1, n - 1)
    bounds: dict[str, np.ndarray] = {"sid": a.sid[starts], "first_t": a.t[starts], "last_t": a.t[ends]}
    for c in VALUE_COLS:
        bounds["f_" + c], bounds["l_" + c] = a.vals[c][starts], a.vals[c][ends]
        bounds["fv_" + c], bounds["lv_" + c] = a.valid[c][starts], a.valid[c][ends]
    return UnitResult(agg, _stats(a, ctx), heat, bounds, n)


def _stats(a: Arrays, ctx: Ctx) -> pl.DataFrame:
    """Per key (series, or series and bucket): samples, first/last time, framebuffer, last BIOS UUID."""
    counted = ctx.counted(a.t)
    if counted is not None and not counted.all():
        idx = np.flatnonzero(counted)
        a = Arrays(a.sid[idx], a.t[idx], {k: v[idx] for k, v in a.vals.items()},
                   {k: v[idx] for k, v in a.valid.items()}, a.bios[idx])
    n = len(a.sid)
    if n == 0:
        return pl.DataFrame(schema=STAT_SCHEMA)
    key = ctx.key(a.sid, a.t)
    new = np.ones(n, bool)
    new[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:] - 1, n - 1)
    fbv = np.where(a.valid["fb_used_bytes"], a.vals["fb_used_bytes"], -1)
    fbt = np.where(a.valid["fb_total_bytes"], a.vals["fb_total_bytes"], -1)
    last_valid = np.maximum.reduceat(np.where(a.bios >= 0, np.arange(n), -1), starts)
    bios = np.where(last_valid >= 0, a.bios[np.maximum(last_valid, 0)], -1)
    return pl.DataFrame(
        {
            "sid": key[starts],
            "samples": (ends - starts + 1).astype(np.int64),
            "first_ms": a.t[starts],
            "last_ms": a.t[ends],
            "fb_max_bytes": np.maximum.reduceat(fbv, starts),
            "fb_total_bytes": np.maximum.reduceat(fbt, starts),
            "bios_id": bios,
        },
        schema=STAT_SCHEMA,
    )


def _stitch(bounds: list[dict[str, np.ndarray]], ctx: Ctx) -> tuple[UnitResult | None, set[int]]:
    """Intervals between units: last row of one unit → first row of the next, per series."""
    if not bounds:
        return None, set()
    cat = {k: np.concatenate([b[k] for b in bounds]) for k in bounds[0]}
    unit = np.concatenate([np.full(len(b["sid"]), i) for i, b in enumerate(bounds)])
    order = np.lexsort((cat["last_t"], cat["first_t"], cat["sid"]))
    cat = {k: v[order] for k, v in cat.items()}
    unit = unit[order]
    sid = cat["sid"]
    nxt = np.flatnonzero(sid[1:] == sid[:-1])  # pairs (nxt, nxt+1)
    overlap = cat["first_t"][nxt + 1] < cat["last_t"][nxt]
    bad = set(sid[nxt[overlap]].tolist())
    pairs = nxt[~overlap & ~np.isin(sid[nxt], list(bad))] if bad else nxt
    if len(pairs) == 0:
        return None, bad
    p, q = pairs, pairs + 1
    inter = np.empty(2 * len(p), np.int64)
    inter[0::2], inter[1::2] = p, q
    first = np.zeros(2 * len(p), bool)
    first[0::2] = True  # row 2i = last row of the earlier unit, row 2i+1 = first row of the later one
    t = np.where(first, cat["last_t"][inter], cat["first_t"][inter])
    vals = {c: np.where(first, cat["l_" + c][inter], cat["f_" + c][inter]) for c in VALUE_COLS}
    valid = {c: np.where(first, cat["lv_" + c][inter], cat["fv_" + c][inter]) for c in VALUE_COLS}
    a = Arrays(sid[inter], t, vals, valid, np.full(len(inter), -1, np.int64))
    same = ~first  # row 2i+1 continues row 2i only
    agg, heat = _intervals(a, same, ctx)
    return UnitResult(agg, pl.DataFrame(schema=STAT_SCHEMA), heat, {}, 0), bad
