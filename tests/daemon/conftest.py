"""Fixtures for the daemon tests: the real Prometheus server (see tests/prometheus)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from accelmon.exporter.prometheus_server import PrometheusServer


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    servers: list[PrometheusServer] = []

    def make(targets: list[str] | None = None, **kw: Any) -> PrometheusServer:
        s = PrometheusServer(targets or [], workdir=tmp_path / f"prom{len(servers)}", **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()
