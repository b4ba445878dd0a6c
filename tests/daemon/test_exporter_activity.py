"""/metrics: SM/tensor/DRAM activity only for GPUs whose source reports it (never zeros), and the
hollow flag from the latest findings (docs/metrics.md)."""

from __future__ import annotations

import datetime as dt

from accelmon.config import ExporterConfig
from accelmon.exporter.server import MetricsApp

from .test_exporter import _series, _state, _t


def test_activity_series_only_where_reported_and_hollow_flag() -> None:
    st = _state()
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    st.apply({"gpu_sample": _t("gpu_sample", [
        {"ts": now, "gpu_uuid": "GPU-0", "source": "agent", "util_percent": 90.0, "busy_ms_total": 9_000,
         "idle_ms_total": 1_000, "sm_active_ms_total": 400, "tensor_active_ms_total": 0, "dram_active_ms_total": 250,
         "sm_active_percent": 4.0, "sm_occupancy_percent": 2.0}])})
    st.set_findings([{"kind": "hollow", "subject": "GPU-0"}])
    text = MetricsApp(st, ExporterConfig()).render().decode()
    sm = _series(text, "accelmon_gpu_sm_active_seconds_total")
    assert [k for k in sm if 'gpu_uuid="GPU-0"' in k] and sm[next(k for k in sm if 'gpu_uuid="GPU-0"' in k)] == 0.4
    # GPUs without activity data have no activity series at all (absent, not 0)
    for name in ("accelmon_gpu_sm_active_seconds_total", "accelmon_gpu_tensor_active_seconds_total",
                 "accelmon_gpu_dram_active_seconds_total", "accelmon_gpu_sm_active_ratio",
                 "accelmon_gpu_sm_occupancy_ratio"):
        got = _series(text, name)
        assert len(got) == 1 and 'gpu_uuid="GPU-0"' in next(iter(got)), name
    assert next(iter(_series(text, "accelmon_gpu_sm_active_ratio").values())) == 0.04
    assert next(iter(_series(text, "accelmon_gpu_tensor_active_seconds_total").values())) == 0.0  # measured 0
    hollow = _series(text, "accelmon_gpu_hollow")
    assert {k for k, v in hollow.items() if v == 1} == {k for k in hollow if 'gpu_uuid="GPU-0"' in k}
