"""`accelmon backfill`: DCGM history from a real Prometheus server (blocks written by promtool)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from accelmon.collector.prometheus_backfill import MAX_POINTS, run_backfill
from accelmon.demo.prometheus import PrometheusServer, create_blocks_from_openmetrics
from accelmon.errors import UserError
from accelmon.store import Store

GPUS = ["GPU-11111111-2222-3333-4444-555555555555", "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"]
STEP = 60
DAYS = 2


def _util(i: int, t: int) -> int:
    return int(50 + 45 * math.sin(t / 3600.0 + i))


def _history(end: int) -> str:
    start = end - DAYS * 86400
    fams = {
        "DCGM_FI_DEV_GPU_UTIL": lambda i, t: _util(i, t),
        "DCGM_FI_DEV_MEM_COPY_UTIL": lambda i, t: _util(i, t) // 2,
        "DCGM_FI_DEV_FB_USED": lambda i, t: 1000 + i * 100 + (t // STEP) % 7,
        "DCGM_FI_DEV_FB_FREE": lambda i, t: 39000 - i * 100 - (t // STEP) % 7,
        "DCGM_FI_DEV_FB_RESERVED": lambda i, t: 960,
        "DCGM_FI_DEV_POWER_USAGE": lambda i, t: 60.5 + _util(i, t) * 2.0,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": lambda i, t: (t - start) * (100 + i) * 1000,
    }
    out = []
    for name, fn in fams.items():
        kind = "counter" if "ENERGY" in name else "gauge"
        out.append(f"# TYPE {name} {kind}")
        for i, uuid in enumerate(GPUS):
            labels = f'gpu="{i}",UUID="{uuid}",modelName="NVIDIA A100-SXM4-40GB",Hostname="node{i}"'
            for t in range(start, end + 1, STEP):
                out.append(f"{name}{{{labels}}} {fn(i, t)} {t}")
    out.append("# EOF")
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def dcgm_history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    d = tmp_path_factory.mktemp("prom-history")
    end = (int(time.time()) // STEP) * STEP - 3600
    create_blocks_from_openmetrics(_history(end), d / "data")
    return d, end


def _serve_history(prometheus_factory: Callable[..., PrometheusServer], src_dir: Path) -> PrometheusServer:
    """A real Prometheus serving the DCGM history blocks made by the fixture."""
    prom = prometheus_factory()
    prom.data_dir = src_dir / "data"
    prom.start()
    return prom


def test_backfill_imports_dcgm_series(
    dcgm_history: tuple[Path, int], prometheus_factory: Callable[..., PrometheusServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src_dir, end = dcgm_history
    prom = _serve_history(prometheus_factory, src_dir)
    store = Store(tmp_path / "store")
    since = time.time() - (end - DAYS * 86400) + 60
    assert run_backfill(store, prom.url, since, step_seconds=STEP, progress=True) == 0
    assert "imported" in capsys.readouterr().out
    con = store.connect()
    n, gpus, srcs = con.execute(
        "SELECT count(*), count(DISTINCT gpu_uuid), list(DISTINCT source) FROM gpu_sample").fetchone()
    # every minute of the history (and up to 5 min of Prometheus' lookback after its end), both GPUs
    per_gpu = DAYS * 86400 // STEP + 1
    assert gpus == 2 and srcs == ["prometheus"]
    assert per_gpu * 2 <= n <= (per_gpu + 6) * 2
    dup = con.execute("SELECT count(*) FROM (SELECT gpu_uuid, ts FROM gpu_sample GROUP BY ALL HAVING count(*) > 1)")
    assert dup.fetchone()[0] == 0
    # values at an exact history timestamp, in the schema's units
    t = end - 7200
    row = con.execute(
        "SELECT util_percent, mem_util_percent, fb_used_bytes, fb_total_bytes, power_milliwatts, "
        "energy_millijoules_total FROM gpu_sample WHERE gpu_uuid = ? AND epoch(ts) = ?", [GPUS[1], t]
    ).fetchone()
    util = _util(1, t)
    assert row[0] == util and row[1] == util // 2
    assert row[2] == (1100 + (t // STEP) % 7) << 20
    assert row[3] == (1100 + 38900 + 960) << 20
    assert row[4] == int(round((60.5 + util * 2.0) * 1000))
    assert row[5] == (t - (end - DAYS * 86400)) * 101 * 1000
    # busy/idle counters are not invented from a sampled gauge
    assert con.execute("SELECT count(busy_ms_total) FROM gpu_sample").fetchone()[0] == 0

    # re-running adds nothing (idempotent) and says so with exit code 1
    assert run_backfill(store, prom.url, since, step_seconds=STEP, progress=False) == 1
    assert store.connect().execute("SELECT count(*) FROM gpu_sample").fetchone()[0] == n


def test_backfill_chunks_long_ranges(
    dcgm_history: tuple[Path, int], prometheus_factory: Callable[..., PrometheusServer], tmp_path: Path
) -> None:
    """More than Prometheus' 11,000 points per series: split into several query_range calls."""
    src_dir, end = dcgm_history
    prom = _serve_history(prometheus_factory, src_dir)
    store = Store(tmp_path / "store")
    step = 5
    since = time.time() - (end - 86400)
    assert since / step > MAX_POINTS  # really more than one chunk
    assert run_backfill(store, prom.url, since, step_seconds=step, progress=False) == 0
    con = store.connect()
    rows = con.execute(
        "SELECT gpu_uuid, count(*), count(DISTINCT ts), epoch(max(ts)) - epoch(min(ts)) FROM gpu_sample GROUP BY 1"
    ).fetchall()
    assert len(rows) == 2
    for _uuid, n, distinct, span in rows:
        assert n == distinct  # no overlap between chunks
        assert n == span / step + 1  # and no hole at the chunk borders


def test_backfill_errors_are_one_line_without_credentials(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with pytest.raises(UserError) as e:
        run_backfill(store, "http://alice:s3cr3tpw@127.0.0.1:9/", 3600, progress=False)
    msg = str(e.value)
    assert "127.0.0.1:9" in msg and "s3cr3tpw" not in msg and "\n" not in msg
    with pytest.raises(UserError, match="not a URL"):
        run_backfill(store, "prometheus:9090", 3600, progress=False)
