"""Trace generators, the import-trace CSV replay, and simulation spec validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelmon.errors import UserError
from accelmon.sim.spec import PRESETS, load_spec, parse_spec
from accelmon.sim.traces import BurstyInference, BusyTraining, IdleAllocated, load_csv_traces, make_trace

T0 = 1_700_000_000.0


def grid(trace, seconds: float, step: float = 1 / 6) -> list[float]:
    n = int(seconds / step)
    return [trace.util(T0 + i * step) for i in range(n)]


def test_generators_are_deterministic_functions_of_time() -> None:
    a, b, c = BurstyInference(seed=1), BurstyInference(seed=1), BurstyInference(seed=2)
    ts = [T0 + 0.37 * i for i in range(500)]
    assert [a.util(t) for t in ts] == [b.util(t) for t in reversed(ts)][::-1]  # any order, same answer
    assert [a.util(t) for t in ts] != [c.util(t) for t in ts]


def test_busy_training_is_busy_with_checkpoint_dips() -> None:
    u = grid(BusyTraining(seed=3), 3600)
    assert sum(u) / len(u) > 80
    assert 0.01 < sum(1 for x in u if x == 0) / len(u) < 0.1  # a minute of checkpointing per 30 min
    assert all(0 <= x <= 100 for x in u)


def test_bursty_inference_mixes_idle_and_bursts() -> None:
    u = grid(BurstyInference(seed=4), 1800)
    idle = sum(1 for x in u if x == 0) / len(u)
    assert 0.2 < idle < 0.95
    assert max(u) > 50


def test_idle_allocated_holds_memory_without_work() -> None:
    t = IdleAllocated()
    assert set(grid(t, 60)) == {0.0}
    assert t.mem_fraction(T0) == pytest.approx(0.7)


def test_csv_trace_replays_and_loops(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text(
        "timestamp,gpu,util_percent,memory_used_bytes\n"
        "1000,a,10,100\n1010,a,90,200\n1020,a,0,\n"
        "2024-01-01T00:00:00Z,b,55,\n"
    )
    traces = load_csv_traces(p)
    assert set(traces) == {"a", "b"}
    a = make_trace(f"csv:{p}#a", anchor=T0)
    assert [a.util(T0 + s) for s in (0, 5, 10, 19, 20, 29, 30)] == [10, 10, 90, 90, 0, 0, 10]  # loops after 30 s
    assert a.mem_bytes(T0 + 11) == 200 and a.mem_bytes(T0 + 21) is None
    b = make_trace({"csv": "t.csv", "gpu": "b"}, base_dir=tmp_path)
    assert b.util(12345.0) == 55


@pytest.mark.parametrize(
    "body, msg",
    [
        ("gpu,util_percent\n", "t.csv:1: timestamp: missing column"),
        ("timestamp,gpu,util_percent\nyesterday,a,1\n", "t.csv:2: timestamp: not Unix seconds"),
        ("timestamp,gpu,util_percent\n1,a,1\n2,a,101\n", "t.csv:3: util_percent: must be 0–100"),
        ("timestamp,gpu,util_percent\n1,a\n", "t.csv:2: expected 3 columns"),
        ("timestamp,gpu,util_percent,memory_used_bytes\n1,a,1,lots\n", "t.csv:2: memory_used_bytes: not a number"),
    ],
)
def test_csv_errors_name_file_line_column(tmp_path: Path, body: str, msg: str) -> None:
    p = tmp_path / "t.csv"
    p.write_text(body)
    with pytest.raises(UserError) as ei:
        load_csv_traces(p)
    assert msg in str(ei.value) and "\n" not in str(ei.value)


def test_trace_specs() -> None:
    assert make_trace("constant:40").util(T0) == 40
    assert make_trace({"generator": "bursty_inference", "seed": 9}).name == "bursty_inference"
    for bad in ("nonsense", {"generator": "nope"}, "constant:x", 42):
        with pytest.raises(UserError):
            make_trace(bad)


def test_presets_load_and_spec_errors_name_the_key(tmp_path: Path) -> None:
    for name in PRESETS:
        assert load_spec(name).gpus
    assert len(load_spec("dgx-a100").gpus) == 8
    cases = [
        ({"gpu": [{"model": "Voodoo2"}]}, "gpu[0].model: unknown model"),
        ({"gpu": [{"modle": "A100"}]}, "gpu[0].modle: unknown key"),
        ({"gpu": [{"model": "L4", "mig": ["1g.5gb"]}]}, "gpu[0].mig: L4 does not support MIG"),
        ({"gpu": [{"mode": "sriov"}]}, "gpu[0].mode: must be one of"),
        ({"gpu": []}, "gpu: give at least one"),
        ({"gpu": [{}], "speed": 0}, "speed: must be a number > 0"),
    ]
    for raw, msg in cases:
        with pytest.raises(UserError) as ei:
            parse_spec(raw, "spec.toml")
        assert str(ei.value).startswith("spec.toml: ") and msg in str(ei.value)
    f = tmp_path / "vm.toml"
    f.write_text('speed = 60\nhostname = "gpu-vm-7"\n[[gpu]]\nmodel = "H100"\ncount = 2\ntrace = "idle_allocated"\n')
    s = load_spec(str(f))
    assert s.speed == 60 and s.hostname == "gpu-vm-7" and [g.model.key for g in s.gpus] == ["H100", "H100"]
    (tmp_path / "bad.toml").write_text("[[gpu]\n")
    with pytest.raises(UserError, match="bad.toml: not valid TOML"):
        load_spec(str(tmp_path / "bad.toml"))
    with pytest.raises(UserError, match="neither a preset"):
        load_spec("no-such-preset")
