"""vMotion rows and their cursors: a cursor moves only after its rows are stored.

A write that fails (a full data dir) must leave the events cursor and the vmware.log offsets
where they were, so the next poll reads the same migrations again; and a state file older than
the store (a crash between the append and the save) must not make a restart store a migration
twice.  The seeded simulator's vMotions are the reference (its manifest lists every chain)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelmon.collector.vcenter.state import state_path
from accelmon.config import parse
from accelmon.daemon.service import Daemon
from accelmon.sim.vcsim import Vcsim
from accelmon.store import Store

from .test_disk_full import small_disk  # noqa: F401 - the fixture (tmpfs, else RLIMIT_FSIZE)


def _cfg(sim: Vcsim) -> Any:
    return parse({
        "vcenter": [{"url": sim.url, "user": sim.user, "password": sim.password, "ca_bundle": str(sim.ca_file),
                     "inventory_interval": "1s", "perf_interval": "1s", "events_interval": "1s"}],
        "agents": {"discovery": False}, "report": {"enabled": False},
    }, "test.toml", env={})


def _stored(data: Path) -> list[tuple[int, float | None]]:
    con = Store(data).connect()
    try:
        return con.execute("SELECT chain_id, stun_seconds FROM vmotion ORDER BY chain_id").fetchall()
    finally:
        con.close()


def _run(d: Daemon) -> int:
    time.sleep(1.1)  # past the job's backoff after a failed poll (1 interval)
    return d.run_once()


def _check_exactly_once(data: Path, sim: Vcsim) -> None:
    want = {mv["chain_id"]: mv for mv in sim.manifest["vmotions"]}
    rows = _stored(data)
    chains = [c for c, _ in rows]
    assert len(chains) == len(set(chains)), "a migration stored twice"
    assert set(chains) == set(want), (sorted(set(want) - set(chains)), sorted(set(chains) - set(want)))
    for chain, stun in rows:  # the stun time came with it (the vmware.log offsets did not skip ahead)
        assert stun is not None and abs(stun - want[chain]["stun_us"] / 1e6) < 1e-6, chain
    con = Store(data).connect()
    try:  # the power cursors too: no sample stored twice
        for tbl, col in (("vm_power_sample", "vm_moref"), ("host_power_sample", "host_moref")):
            assert con.execute(f"SELECT count(*) FROM {tbl}").fetchone()[0] > 0
            dup = con.execute(f"SELECT count(*) FROM (SELECT {col}, ts FROM {tbl} GROUP BY ALL HAVING count(*) > 1)"
                              ).fetchone()[0]
            assert dup == 0, tbl
    finally:
        con.close()


def test_vmotions_survive_a_failed_write_and_restarts(
    vcsim_factory: Callable[..., Vcsim],
    small_disk: tuple[Path, Callable[[], None], Callable[[], None], str],  # noqa: F811
) -> None:
    data, fill, free, how = small_disk
    sim = vcsim_factory(seed=3)
    assert sim.manifest["vmotions"], "the seeded estate has vMotions"
    d = Daemon(_cfg(sim), Store(data))
    d.prepare()
    try:
        fill()
        try:
            assert d.run_once() == 1, how  # every write fails: the data dir is full
        finally:
            free()
        assert not _stored(data)
        assert _run(d) == 0  # space is back: the same migrations are read again and stored
    finally:
        d.stop()
    _check_exactly_once(data, sim)
    sf = state_path(data, _uuid(data))
    stale = data.parent / "stale-state.json"
    shutil.copy(sf, stale)

    # a new migration, stored; then a crash is simulated by putting back the state file from
    # before it (the append landed, the save did not): the restart must not store it again
    vm = next(v for v in sim.manifest["vms"] if v["power_state"] == "poweredOn" and v["gpus"]
              and all(g["kind"] == "vgpu" for g in v["gpus"]))  # one that can migrate (not DirectPath)
    sim.vmotion(vm["moref"])
    d = Daemon(_cfg(sim), Store(data))
    d.prepare()
    try:
        assert d.run_once() == 0
    finally:
        d.stop()
    _check_exactly_once(data, sim)
    shutil.copy(stale, sf)
    for restore in ("stale", "missing"):
        if restore == "missing":
            sf.unlink()  # no state file at all: the store alone says what was written
        d = Daemon(_cfg(sim), Store(data))
        d.prepare()
        try:
            assert d.run_once() == 0, restore
        finally:
            d.stop()
        _check_exactly_once(data, sim)


def _uuid(data: Path) -> str:
    con = Store(data).connect()
    try:
        (u,) = con.execute("SELECT DISTINCT vcenter_uuid FROM vmotion").fetchone()
    finally:
        con.close()
    return str(u)
