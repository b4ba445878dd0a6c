"""The source registry, `run_daemon(once=True)` and start-up errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from accelmon.collector import registry
from accelmon.config import parse
from accelmon.daemon.main import run_daemon
from accelmon.demo.prometheus import free_port
from accelmon.errors import UserError
from accelmon.store import Store

from .procs import Agent


def _cfg(**kw: object) -> object:
    return parse({"report": {"enabled": False}, **kw}, "accelmon.toml", env={})


def test_registry_builds_enabled_kinds_and_rejects_unknown_names() -> None:
    vc = {"url": "https://vc01.lab/sdk", "user": "u", "password": "pw-1234"}
    cfg = _cfg(vcenter=[vc], dcgm=[{"url": "http://gpu01:9400/metrics"}],
               nvidia_gpu_exporter=[{"url": "http://gpu02:9835/metrics"}],
               agents={"static": ["http://10.0.0.5:9835/metrics"]})
    inst = registry.instances(cfg)
    assert sorted((i.kind, i.target) for i in inst) == [
        ("agent", "http://10.0.0.5:9835/metrics"), ("dcgm", "http://gpu01:9400/metrics"),
        ("nvidia_gpu_exporter", "http://gpu02:9835/metrics"), ("vcenter", "https://vc01.lab/sdk")]
    built = {i.kind: i.build() for i in inst}
    assert type(built["dcgm"]).__name__ == "DcgmExporterSource"
    assert type(built["agent"]).__name__ == "AgentSource"
    jobs = registry.jobs_of("vcenter", built["vcenter"], 20.0)
    assert [j.name for j in jobs] == ["vcenter.inventory", "vcenter.perf", "vcenter.events"]
    assert [j.interval_s for j in jobs] == [300.0, 20.0, 60.0]
    for s in built.values():
        s.close()
    off = _cfg(vcenter=[vc], sources={"vcenter": False, "dcgm": True})
    assert [i.kind for i in registry.instances(off)] == []
    with pytest.raises(UserError, match=r"^accelmon.toml: sources.vcentre: unknown source; known: vcenter, agent"):
        registry.instances(_cfg(sources={"vcentre": False}))


def test_once_polls_every_source_and_says_whether_all_succeeded(tmp_path: Path) -> None:
    a = Agent(tmp_path, "a", bios_uuid="42000000-0000-4000-8000-0000000000c1",
              gpus=[{"model": "T4", "trace": "constant:10"}]).start()
    try:
        store = Store(tmp_path / "d1")
        assert run_daemon(_cfg(agents={"discovery": False, "static": [a.url]}), store, once=True) == 0
        assert store.connect().execute("SELECT count(*) FROM gpu_sample").fetchone()[0] == 1
        dead = f"http://127.0.0.1:{free_port()}/metrics"
        store2 = Store(tmp_path / "d2")
        assert run_daemon(_cfg(agents={"discovery": False, "static": [a.url, dead]}), store2, once=True) == 1
        assert store2.connect().execute("SELECT count(*) FROM gpu_sample").fetchone()[0] == 1
    finally:
        a.stop()


def test_exporter_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = _cfg(agents={"discovery": False}, exporter={"listen": f"127.0.0.1:{port}"})
        with pytest.raises(UserError, match=rf"accelmon.toml: exporter.listen: cannot listen on 127.0.0.1:{port}"):
            run_daemon(cfg, Store(tmp_path / "d"))
