"""Shared fixtures: the seeded govmomi vCenter simulator (accelmon.sim.vcsim) and the real
Prometheus server (Debian package `prometheus`), each started by the tests on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from accelmon.demo.prometheus import PrometheusServer
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


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Start real Prometheus servers scraping ``targets``; all stopped (by pid) after the test."""
    servers: list[PrometheusServer] = []

    def make(targets: list[str] | None = None, **kw: Any) -> PrometheusServer:
        s = PrometheusServer(targets or [], workdir=tmp_path / f"prom{len(servers)}", **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()
