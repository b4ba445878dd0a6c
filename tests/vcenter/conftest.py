"""One small seeded vcsim per test module (the simulator is the project's, see accelmon.sim.vcsim)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from accelmon.collector.vcenter.source import VCenterSource
from accelmon.config import VCenterConfig
from accelmon.sim.vcsim import Vcsim
from accelmon.store.writer import Store


@pytest.fixture(scope="module")
def estate() -> Iterator[Vcsim]:
    sim = Vcsim.start(clusters=2, hosts_per_cluster=2, vms=40, seed=3)
    try:
        yield sim
    finally:
        sim.stop()


def vc_config(sim: Vcsim, **kw: object) -> VCenterConfig:
    args: dict[str, object] = {"url": sim.url, "user": sim.user, "password": sim.password,
                               "ca_bundle": sim.ca_file}
    args.update(kw)
    return VCenterConfig(**args)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


@pytest.fixture
def source(estate: Vcsim) -> Iterator[VCenterSource]:
    src = VCenterSource(vc_config(estate))
    try:
        yield src
    finally:
        src.close()
