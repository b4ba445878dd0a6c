"""Every registered source implements the Source Protocol (collector/base.py) as it is, no
attribute probing and no signature fallback in the registry; the store and the daemon's write
buffer implement the store's writer Protocol (accelmon/store/sink.py). mypy checks the same
statically (tools/typecheck.py); these tests check the built objects."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from accelmon.collector import registry
from accelmon.collector.agent_source import emit_rows
from accelmon.collector.base import CollectResult, Source, SourceJob
from accelmon.config import parse
from accelmon.daemon.buffer import WriteBuffer
from accelmon.store import Store
from accelmon.store.sink import RowSink, StoreWriter


def test_every_registered_source_implements_the_protocol(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = parse({"report": {"enabled": False},
                 "vcenter": [{"url": "https://vc01.lab/sdk", "user": "u", "password": "pw-1234"}],
                 "dcgm": [{"url": "http://gpu01:9400/metrics"}],
                 "nvidia_gpu_exporter": [{"url": "http://gpu02:9835/metrics"}],
                 "agents": {"static": ["http://10.0.0.5:9835/metrics"], "ca_bundle": str(ca),
                            "scrape_interval": "7s"}},
                "accelmon.toml", env={})
    insts = registry.instances(cfg)
    assert {i.kind for i in insts} == {"vcenter", "dcgm", "nvidia_gpu_exporter", "agent"}
    for inst in insts:
        src = inst.build()
        try:
            assert isinstance(src, Source), inst.kind
            assert (src.name, src.target) == (inst.kind, inst.target)
            jobs = registry.jobs_of(inst.kind, src, inst.interval_s)
            assert jobs and all(isinstance(j, SourceJob) and j.interval_s > 0 for j in jobs)
            if inst.kind != "vcenter":  # one scrape at the instance's interval
                assert [(j.name, j.interval_s) for j in jobs] == [(inst.kind, inst.interval_s)]
            if inst.kind == "agent":
                assert inst.interval_s == 7.0
                assert src.verify == str(ca)  # type: ignore[attr-defined]  # the TLS option reached the source
        finally:
            src.close()


def test_store_and_write_buffer_are_writers(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    buf = WriteBuffer(store)
    assert isinstance(store, StoreWriter) and not isinstance(store, RowSink)
    assert isinstance(buf, StoreWriter) and isinstance(buf, RowSink)
    row = {"ts": 1_700_000_000.0, "gpu_uuid": "GPU-1", "agent_url": "http://10.0.0.5:9835/metrics"}
    # a plain store gets typed tables now; the buffer takes the dicts and converts them on flush
    direct = emit_rows(store, {"agent_gpu": [dict(row)]})
    buffered = emit_rows(buf, {"agent_gpu": [dict(row)]})
    assert isinstance(direct, CollectResult) and direct.rows == {"agent_gpu": 1}
    assert isinstance(direct.tables["agent_gpu"], pa.Table)
    assert buffered.rows == {"agent_gpu": 1} and not buffered.tables
    assert buf.flush() == 1
    assert store.connect().execute("SELECT count(*) FROM agent_gpu").fetchone() == (2,)
