"""Shared fixtures. vcsim: the seeded govmomi vCenter simulator (accelmon.sim.vcsim)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from accelmon.sim.vcsim import Vcsim

SMALL_ESTATE = {"clusters": 2, "hosts_per_cluster": 3, "vms": 60, "seed": 1}


@pytest.fixture(scope="session")
def vcsim() -> Iterator[Vcsim]:
    """The small seeded estate (2 clusters x 3 hosts, 60 VMs, 7 with GPUs), TLS, one per session.

    Read-only by convention: tests that change the inventory use ``vcsim_factory``.
    """
    sim = Vcsim.start(**SMALL_ESTATE)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def vcsim_factory() -> Iterator[Callable[..., Vcsim]]:
    """Start simulators of any size (``Vcsim.start`` keywords); all stopped after the test."""
    started: list[Vcsim] = []

    def make(**kw: Any) -> Vcsim:
        sim = Vcsim.start(**{**SMALL_ESTATE, **kw})
        started.append(sim)
        return sim

    try:
        yield make
    finally:
        for sim in started:
            sim.stop()
