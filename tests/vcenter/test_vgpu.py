from __future__ import annotations

import pytest

from accelmon.collector.vcenter.vgpu import GIB, fb_bytes, parse_profile


@pytest.mark.parametrize(
    ("name", "board", "slices", "fb_gb", "series"),
    [
        ("grid_a100x-40c", "a100x", None, 40, "c"),
        ("grid_a100-4-20c", "a100", 4, 20, "c"),
        ("grid_a100-7-40c", "a100", 7, 40, "c"),
        ("grid_a100d-1-10c", "a100d", 1, 10, "c"),
        ("grid_v100dx-32q", "v100dx", None, 32, "q"),
        ("grid_t4-16c", "t4", None, 16, "c"),
        ("grid_a16-2b", "a16", None, 2, "b"),
        ("grid_m10-8a", "m10", None, 8, "a"),
        ("grid_l40s-48q", "l40s", None, 48, "q"),
        ("grid_a100-1-5me", "a100", 1, 5, "me"),
        ("grid_h100-1-10cme", "h100", 1, 10, "cme"),
        ("nvidia_h100xm-80c", "h100xm", None, 80, "c"),
        ("GRID_A100-40C", "a100", None, 40, "c"),
    ],
)
def test_profile_names(name: str, board: str, slices: int | None, fb_gb: int, series: str) -> None:
    p = parse_profile(name)
    assert p is not None
    assert (p.board, p.slices, p.fb_label_gb, p.series) == (board, slices, fb_gb, series)
    assert p.fb_bytes == fb_gb * GIB
    assert p.mig_backed == (slices is not None)


def test_zero_label_is_512_mib() -> None:
    p = parse_profile("grid_m60-0b")
    assert p is not None and p.fb_bytes == 512 * 1024 * 1024


@pytest.mark.parametrize("bad", ["", None, "a100-40c", "grid_a100", "grid_a100-40", "grid_a100-40x",
                                 "grid_-40c", "grid_a100-4-20-c", "vmiop grid_a100-40c"])
def test_not_profiles(bad: str | None) -> None:
    assert parse_profile(bad) is None
    assert fb_bytes(bad) is None


def test_api_size_wins_over_label() -> None:
    assert fb_bytes("grid_a100-40c") == 40 * GIB
    assert fb_bytes("grid_a100-40c", {"grid_a100-40c": 39}) == 39 * GIB
    # a zero/absent API size falls back to the label
    assert fb_bytes("grid_a100-40c", {"grid_a100-40c": 0}) == 40 * GIB
