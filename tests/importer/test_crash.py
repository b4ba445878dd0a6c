"""kill -9 and disk full in the middle of a real ``accelmon import-trace`` process.

Invariant: after the next import (which first recovers), the store holds the old data plus the
trace exactly once - never part of it, never twice. A kill before the publish journal leaves
the store untouched; a kill after it is completed (rolled forward) by the next run."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import distinct_keys, grid, rows, run_import, snapshot, start_import, write_trace

T = 1_796_400_000


def _wait_stopped(p: subprocess.Popen[str], timeout: float = 120.0) -> None:
    """Until the process has stopped itself (SIGSTOP at the fault point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.02)
    raise AssertionError("the import never reached its fault point")


def _kill9(p: subprocess.Popen[str]) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, int]:
    """A store with one trace, and a 3-day trace to import (3 staged files: one per day)."""
    data = tmp_path / "data"
    assert run_import(data, write_trace(tmp_path / "old.csv", grid(2, 50, t0=T - 7 * 86_400))).returncode == 0
    trace = write_trace(tmp_path / "three-days.csv", grid(4, 3 * 288, t0=T, step_s=300))
    return data, trace, rows(data)


@pytest.mark.parametrize("point", ["read:0", "journal:0", "published:1", "published:2", "recorded:0"])
def test_kill_9_at_each_step_then_retry_gives_everything_exactly_once(setup: tuple[Path, Path, int],
                                                                       point: str) -> None:
    data, trace, n0 = setup
    expected = n0 + 4 * 3 * 288
    before = snapshot(data)
    p = start_import(data, trace, {"IMPORT_TRACE_TEST_STOP": point})
    _wait_stopped(p)
    _kill9(p)
    if point in ("read:0", "journal:0"):
        assert snapshot(data) == before, "nothing is visible before the publish step"
    else:
        assert n0 < rows(data) <= expected  # renamed day files are visible until the next run completes
    assert any((data / ".staging").iterdir()), "the killed import left its staging dir"
    r = run_import(data, trace)
    assert r.returncode == 0, r.stderr
    if point == "read:0":
        assert "removed the staging files of an interrupted import" in r.stderr
        assert "imported 3456 samples" in r.stdout
    else:
        assert "completed an interrupted import (3456 rows" in r.stderr
        assert "already imported" in r.stdout
    assert rows(data) == expected == distinct_keys(data)
    assert not any((data / ".staging").iterdir())
    r = run_import(data, trace)
    assert r.returncode == 0 and "already imported" in r.stdout and rows(data) == expected


def test_kill_9_at_arbitrary_moments(tmp_path: Path) -> None:
    """No fault point: kills at growing delays while a bigger trace is read, staged or published."""
    data = tmp_path / "data"
    trace = write_trace(tmp_path / "t.csv", grid(50, 4000, t0=T, step_s=30))  # 200,000 rows over 33 h
    for delay in (0.5, 1.5, 3.0):
        p = start_import(data, trace)
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)  # may land just after the import finished on its own
        p.wait(timeout=30)
        n = rows(data) if (data / "tables").exists() else 0
        if p.returncode == 0:  # it won the race: everything is there
            assert n == 200_000
        else:
            assert p.returncode == -signal.SIGKILL
            assert n in (0, 200_000) or (0 < n < 200_000 and (data / ".staging").exists())
    r = run_import(data, trace)
    assert r.returncode == 0, r.stderr
    assert rows(data) == 200_000 == distinct_keys(data)


def _fsize_limit(limit: int):  # type: ignore[no-untyped-def]
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return pre


def test_disk_full_while_staging_changes_nothing(setup: tuple[Path, Path, int], tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel fail writes past 64 KiB with EFBIG, as a full disk would."""
    data, _trace, n0 = setup
    big = write_trace(tmp_path / "big.csv", grid(20, 2000, t0=T))  # 40,000 rows: spill files > 64 KiB
    before = snapshot(data)
    r = run_import(data, big, preexec=_fsize_limit(64 << 10))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "disk full" in r.stderr and str(big) in r.stderr and "nothing imported" in r.stderr
    assert snapshot(data) == before and not any((data / ".staging").iterdir())
    r = run_import(data, big)
    assert r.returncode == 0, r.stderr
    assert rows(data) == n0 + 40_000 == distinct_keys(data)
