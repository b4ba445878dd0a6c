"""Cursors move per table, only after that table's append returned: a poll whose first table
was stored and whose second failed stores neither twice nor loses either (the store's real
append, with the file system's ENOSPC raised for one chosen table once)."""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

import pytest

from accelmon.collector.vcenter.source import VCenterSource
from accelmon.sim.vcsim import Vcsim
from accelmon.store.writer import Store

from .conftest import vc_config


class FailOnce(Store):
    """The real store; the next append to ``table`` fails as a full disk would."""

    fail_table: str | None = None

    def append(self, name: str, rows: Any) -> int:
        if name == self.fail_table:
            self.fail_table = None
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().append(name, rows)


def _counts(store: Store) -> dict[str, tuple[int, int]]:
    con = store.connect()
    out = {}
    for tbl, col in (("vm_power_sample", "vm_moref"), ("host_power_sample", "host_moref")):
        n, distinct = con.execute(f"SELECT count(*), count(DISTINCT ({col}, ts)) FROM {tbl}").fetchone()
        out[tbl] = (n, distinct)
    return out


@pytest.mark.parametrize("failing", ["vm_power_sample", "host_power_sample"])
def test_perf_table_failing_alone_is_read_again_and_the_other_not_stored_twice(
    estate: Vcsim, tmp_path: Path, failing: str
) -> None:
    store = FailOnce(tmp_path / "data")
    src = VCenterSource(vc_config(estate))
    try:
        src.collect_inventory(store)
        store.fail_table = failing
        with pytest.raises(OSError):
            src.collect_perf(store)
        src.collect_perf(store)  # the failed table's samples are read again
        time.sleep(21)  # one more realtime sample
        src.collect_perf(store)
    finally:
        src.close()
    src2 = VCenterSource(vc_config(estate))  # and a restart on the same data dir
    try:
        src2.collect_perf(store)
    finally:
        src2.close()
    for tbl, (n, distinct) in _counts(store).items():
        assert n == distinct, f"{tbl}: a sample stored twice"
    con = store.connect()
    # no hole: each entity's series is contiguous 20 s steps, with its first minute (3 samples) and more
    for tbl, col in (("vm_power_sample", "vm_moref"), ("host_power_sample", "host_moref")):
        rows = con.execute(f"SELECT {col}, list(epoch(ts) ORDER BY ts) FROM {tbl} GROUP BY 1").fetchall()
        assert rows, tbl
        for moref, ts in rows:
            assert len(ts) >= 4 and all(b - a == 20 for a, b in zip(ts, ts[1:], strict=False)), (tbl, moref, ts)
