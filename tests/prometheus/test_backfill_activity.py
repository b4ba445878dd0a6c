"""`accelmon backfill`: DCGM profiling fields (effective utilization) from a real Prometheus.

The history is what a Prometheus scraping dcgm-exporter holds: the profiling ratios 0–1
(``DCGM_FI_PROF_SM_ACTIVE`` …, names as in dcgm-exporter's ``etc/dcp-metrics-included.csv``)
for a whole H100 and for the two MIG instances of another (labels ``GPU_I_PROFILE``/``GPU_I_ID``),
and an A100 whose exporter serves no profiling field. Stored: percent = ratio × 100 in the
``*_percent`` gauges, per GPU and per ``<UUID>/GI<id>`` instance; NULL (never 0) where no series.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from accelmon.collector.prometheus_backfill import run_backfill
from accelmon.demo.prometheus import PrometheusServer, create_blocks_from_openmetrics
from accelmon.store import Store

WHOLE = "GPU-11111111-2222-3333-4444-555555555555"
MIG = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
PLAIN = "GPU-99999999-8888-7777-6666-555555555555"
STEP = 60
HOURS = 6
PROF = {  # field -> column
    "DCGM_FI_PROF_SM_ACTIVE": "sm_active_percent",
    "DCGM_FI_PROF_SM_OCCUPANCY": "sm_occupancy_percent",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "tensor_active_percent",
    "DCGM_FI_PROF_DRAM_ACTIVE": "dram_active_percent",
}


def ratio(field: str, entity: int, t: int) -> float:
    """A profiling ratio in [0, 1] (exact in binary: multiples of 1/64), different per field and entity."""
    k = list(PROF).index(field)
    return round(32 + 31 * math.sin(t / 1800.0 + entity + k)) / 64


def _labels(i: int, uuid: str, gi: int | None = None) -> str:
    s = f'gpu="{i}",UUID="{uuid}",device="nvidia{i}",modelName="NVIDIA H100 80GB HBM3"'
    if gi is not None:
        s += f',GPU_I_PROFILE="3g.40gb",GPU_I_ID="{gi}"'
    return s + ',hostname="node-a"'


def _history(end: int) -> str:
    start = end - HOURS * 3600
    ts = range(start, end + 1, STEP)
    out = []
    out.append("# TYPE DCGM_FI_DEV_GPU_UTIL gauge")
    for i, uuid in ((0, WHOLE), (2, PLAIN)):
        out += [f"DCGM_FI_DEV_GPU_UTIL{{{_labels(i, uuid)}}} 97 {t}" for t in ts]
    out.append("# TYPE DCGM_FI_DEV_FB_USED gauge")
    out += [f"DCGM_FI_DEV_FB_USED{{{_labels(1, MIG)}}} 7 {t}" for t in ts]  # the MIG parent's own
    for gi in (1, 2):
        out += [f"DCGM_FI_DEV_FB_USED{{{_labels(1, MIG, gi)}}} {1000 * gi} {t}" for t in ts]
    for field in PROF:
        out.append(f"# TYPE {field} gauge")
        out += [f"{field}{{{_labels(0, WHOLE)}}} {ratio(field, 0, t)} {t}" for t in ts]
        for gi in (1, 2):
            out += [f"{field}{{{_labels(1, MIG, gi)}}} {ratio(field, 10 + gi, t)} {t}" for t in ts]
    out.append("# EOF")
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    d = tmp_path_factory.mktemp("prom-activity")
    end = (int(time.time()) // STEP) * STEP - 3600
    create_blocks_from_openmetrics(_history(end), d / "data")
    return d, end


def test_backfill_profiling_fields_per_gpu_and_mig_instance(
    history: tuple[Path, int], prometheus_factory: Callable[..., PrometheusServer], tmp_path: Path
) -> None:
    src_dir, end = history
    prom = prometheus_factory()
    prom.data_dir = src_dir / "data"
    prom.start()
    store = Store(tmp_path / "store")
    start = end - HOURS * 3600
    assert run_backfill(store, prom.url, time.time() - start + 60, step_seconds=STEP, progress=False) == 0
    con = store.connect()
    ids = {r[0] for r in con.execute("SELECT DISTINCT gpu_uuid FROM gpu_sample").fetchall()}
    assert ids == {WHOLE, PLAIN, MIG, f"{MIG}/GI1", f"{MIG}/GI2"}
    cols = ", ".join(PROF.values())
    for t in range(start, end + 1, 1800):  # at history timestamps: percent = ratio × 100, per entity
        for uuid, entity in ((WHOLE, 0), (f"{MIG}/GI1", 11), (f"{MIG}/GI2", 12)):
            row = con.execute(f"SELECT {cols} FROM gpu_sample WHERE gpu_uuid = ? AND epoch(ts) = ?", [uuid, t]).fetchone()
            assert row == tuple(ratio(f, entity, t) * 100 for f in PROF), (uuid, t)
    # each instance keeps its own framebuffer, and the parent its own (series are not merged by UUID)
    fb = dict(con.execute("SELECT gpu_uuid, list(DISTINCT fb_used_bytes) FROM gpu_sample WHERE gpu_uuid LIKE ?"
                          " GROUP BY ALL", [f"{MIG}%"]).fetchall())
    assert fb == {MIG: [7 << 20], f"{MIG}/GI1": [1000 << 20], f"{MIG}/GI2": [2000 << 20]}
    # no profiling series: NULL, never 0 (the A100 and the MIG parent)
    for uuid in (PLAIN, MIG):
        n, nn = con.execute(f"SELECT count(*), count(COALESCE({cols})) FROM gpu_sample WHERE gpu_uuid = ?",
                            [uuid]).fetchone()
        assert n > 0 and nn == 0, uuid
    assert con.execute("SELECT min(util_percent), max(util_percent) FROM gpu_sample WHERE gpu_uuid = ?",
                       [PLAIN]).fetchone() == (97.0, 97.0)
    # every stored activity value is a percentage, and no active-time counter is invented from a gauge
    lo, hi = con.execute(f"SELECT min(least({cols})), max(greatest({cols})) FROM gpu_sample").fetchone()
    assert lo >= 0.0 and hi <= 100.0
    assert con.execute("SELECT count(sm_active_ms_total) + count(tensor_active_ms_total) + count(dram_active_ms_total)"
                       " FROM gpu_sample").fetchone()[0] == 0
