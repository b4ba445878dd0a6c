"""The per-row-group kernel gives the same answer whatever the file layout."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from accelmon.analytics.samples import aggregate
from accelmon.analytics.utilization import UtilThresholds, gpu_utilization
from accelmon.store.writer import Store
from tests.analytics.synth import T0, held_trace, reference_mean


def _rows(traces, source="import"):
    return [r for tr in traces for r in tr.rows(source)]


def _util(st: Store, end: dt.datetime) -> dict:
    res = gpu_utilization(aggregate(st, T0, end, threads=2), UtilThresholds())
    return {r["gpu"]: r for r in res.to_dicts()}


@pytest.fixture
def traces():
    return [held_trace(f"gpu-{i}", m, hours=36, seed=40 + i) for i, m in enumerate([4, 12, 30, 70])]


def _end(traces):
    return max(dt.datetime.fromtimestamp(tr.t_ms[-1] / 1000, dt.UTC) for tr in traces)


def test_time_major_batches_match_reference(tmp_path, traces):
    """Rows appended in time order, many GPUs per batch (like a scraper), across midnight."""
    st = Store(tmp_path)
    rows = sorted(_rows(traces), key=lambda r: r["ts"])
    for i in range(0, len(rows), 5000):
        st.append("gpu_sample", rows[i:i + 5000])
    got = _util(st, _end(traces))
    for tr in traces:
        assert got[tr.gpu]["mean_util_percent"] == pytest.approx(reference_mean(tr)[0], abs=1e-9)


def test_compaction_does_not_change_results(tmp_path, traces):
    st = Store(tmp_path)
    rows = _rows(traces)
    np.random.default_rng(0).shuffle(rows)
    for i in range(0, len(rows), 7000):
        st.append("gpu_sample", rows[i:i + 7000])
    before = _util(st, _end(traces))
    st.compact()
    after = _util(st, _end(traces))
    for tr in traces:
        ref = reference_mean(tr)[0]
        assert before[tr.gpu]["mean_util_percent"] == pytest.approx(ref, abs=1e-9)
        assert after[tr.gpu]["mean_util_percent"] == pytest.approx(ref, abs=1e-9)
        assert before[tr.gpu]["p95_util_percent"] == after[tr.gpu]["p95_util_percent"]


def test_interleaved_writers_take_the_overlap_path(tmp_path, traces):
    """Two appends whose time ranges interleave for the same series (even/odd samples)."""
    st = Store(tmp_path)
    rows = _rows(traces)
    st.append("gpu_sample", rows[0::2])
    st.append("gpu_sample", rows[1::2])
    sa = aggregate(st, T0, _end(traces), threads=2)
    assert sa.overlapped_series == len(traces)
    got = {r["gpu"]: r for r in gpu_utilization(sa, UtilThresholds()).to_dicts()}
    for tr in traces:
        assert got[tr.gpu]["mean_util_percent"] == pytest.approx(reference_mean(tr)[0], abs=1e-9)


def test_two_sources_for_one_gpu_use_the_best_covered(tmp_path, traces):
    st = Store(tmp_path)
    tr = traces[0]
    st.append("gpu_sample", tr.rows("agent"))
    short = held_trace(tr.gpu, 90, hours=3, seed=1)
    st.append("gpu_sample", short.rows("prometheus"))
    got = _util(st, _end(traces))[tr.gpu]
    assert got["source"] == "agent" and got["sources"] == 2
    assert got["mean_util_percent"] == pytest.approx(reference_mean(tr)[0], abs=1e-9)


def test_window_clips_intervals(tmp_path, traces):
    st = Store(tmp_path)
    tr = traces[2]
    st.append("gpu_sample", tr.rows())
    mid = T0 + dt.timedelta(hours=12)
    got = gpu_utilization(aggregate(st, T0, mid), UtilThresholds()).to_dicts()[0]
    keep = tr.t_ms <= mid.timestamp() * 1000
    from tests.analytics.synth import Trace

    ref, _ = reference_mean(Trace(tr.gpu, tr.t_ms[keep], tr.util[keep]))
    assert got["mean_util_percent"] == pytest.approx(ref, abs=1e-9)
    assert got["coverage_ratio"] <= 1.0
