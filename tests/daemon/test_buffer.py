"""The write buffer's row-dict path: many polls' rows converted once per flush, a poll whose
rows do not fit the schema dropped alone, and the real agent source using that path."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from accelmon.collector.agent_source import AgentSource, RowsResult
from accelmon.daemon.buffer import WriteBuffer
from accelmon.daemon.state import DaemonState
from accelmon.store import Store


def _row(gpu: str, ts: float, busy: Any = 1000) -> dict[str, Any]:
    return {"ts": ts, "gpu_uuid": gpu, "source": "agent", "busy_ms_total": busy, "util_percent": 50.0}


def test_row_dicts_of_many_polls_become_one_file_per_flush(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    buf = WriteBuffer(store)
    now = time.time()
    for i in range(50):
        assert buf.append_rows("gpu_sample", [_row(f"GPU-{i}", now)]) == 1
    assert buf.rows_buffered == 50
    assert buf.flush() == 50 and buf.rows_buffered == 0
    files = [p for p in (tmp_path / "d").rglob("*.parquet") if "gpu_sample" in p.parts and "date=1970-01-01" not in p.parts]  # (1970: the empty-schema file)
    assert len(files) == 1
    con = store.connect()
    got = con.execute("select count(*), count(distinct gpu_uuid), min(busy_ms_total), "
                      "max(abs(epoch(ts) - ?)) from gpu_sample", [now]).fetchone()
    assert got[:3] == (50, 50, 1000) and got[3] < 0.002  # Unix seconds kept to the ms


def test_a_poll_that_does_not_fit_is_dropped_alone_and_reported(tmp_path: Path) -> None:
    invalid: list[tuple[str, int]] = []
    buf = WriteBuffer(Store(tmp_path / "d"), on_invalid=lambda t, n, e: invalid.append((t, n)))
    now = time.time()
    buf.append_rows("gpu_sample", [_row("GPU-a", now)])
    buf.append_rows("gpu_sample", [_row("GPU-bad", now, busy="not a number"), _row("GPU-bad2", now)])
    buf.append_rows("gpu_sample", [_row("GPU-c", now)])
    assert buf.flush() == 2
    assert invalid == [("gpu_sample", 2)] and buf.rows_buffered == 0
    con = Store(tmp_path / "d").connect()
    assert sorted(r[0] for r in con.execute("select gpu_uuid from gpu_sample").fetchall()) == ["GPU-a", "GPU-c"]
    with pytest.raises(ValueError, match="unknown column"):  # a programming error fails the poll at once
        buf.append_rows("gpu_sample", [{**_row("GPU-x", now), "busy_seconds": 1}])


def test_agent_source_hands_row_dicts_to_the_buffer(tmp_path: Path, fake_agent_text: str) -> None:
    src = AgentSource("http://127.0.0.1:9/metrics")
    rows = src.rows(fake_agent_text, time.time())
    buf = WriteBuffer(Store(tmp_path / "d"))
    from accelmon.collector.agent_source import emit_rows

    for r in rows["agent_gpu"]:
        r.pop("_key")
    res = emit_rows(buf, rows)
    assert isinstance(res, RowsResult) and not res.tables
    assert res.rows == {"gpu_sample": 1, "agent_gpu": 1}
    state = DaemonState()
    state.apply(res.row_dicts)
    snap = state.snapshot()
    assert snap.gpus["GPU-1"]["busy_ms_total"] == 12_500 and snap.agents
    assert buf.flush() == 2


@pytest.fixture
def fake_agent_text() -> str:
    return (
        '# TYPE accelmon_agent_info gauge\n'
        'accelmon_agent_info{Hostname="vm1",vm_bios_uuid="4213a1b2-c3d4-e5f6-0718-293a4b5c6d7e"} 1\n'
        'accelmon_gpu_up{UUID="GPU-1",gpu="0"} 1\n'
        'accelmon_gpu_info{UUID="GPU-1",gpu="0",model_name="NVIDIA A100",pci_bus_id="00000000:0B:00.0",'
        'numa_node="-1"} 1\n'
        '# TYPE accelmon_gpu_busy_seconds_total counter\n'
        'accelmon_gpu_busy_seconds_total{UUID="GPU-1",gpu="0"} 12.5\n'
        'accelmon_gpu_utilization_ratio{UUID="GPU-1",gpu="0"} NaN\n'
    )
