"""One simulated machine seen by the three GPU sources the daemon knows.

One :class:`SimNVML` on a hand-stepped clock is read by the accelmon agent (its real poller and
HTTP server), by a simulated dcgm-exporter and by a simulated nvidia_gpu_exporter
(:mod:`accelmon.sim.exporters`). The daemon's real sources scrape the three endpoints over HTTP
into one store per source (so ``accelmon report`` sees each source's series on its own),
through the daemon's write buffer. Samples are stamped with the simulated clock, so an hour of
GPU time runs in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from accelmon.collector.agent.agent import Agent
from accelmon.collector.agent.identity import VmIdentity, swap_uuid_bytes
from accelmon.collector.agent.server import AgentHTTPServer
from accelmon.collector.agent_source import AgentSource, MetricsEndpointSource
from accelmon.collector.exporters import DcgmExporterSource, NvidiaGpuExporterSource
from accelmon.daemon.buffer import WriteBuffer
from accelmon.sim.clock import ManualClock
from accelmon.sim.exporters import ExporterServer, dcgm_exporter_text, nvidia_gpu_exporter_text
from accelmon.sim.nvml import SimNVML
from accelmon.sim.spec import parse_spec
from accelmon.store.writer import Store

VM_UUID = "42023081-331b-58e1-2730-ca560789e551"
SOURCES = ("agent", "dcgm", "nvidia_gpu_exporter")
CLI = [sys.executable, "-c", "import sys; from accelmon.cli import main; sys.argv[0] = 'accelmon'; main()"]


def on_clock(cls: type[MetricsEndpointSource], clock: ManualClock) -> type[MetricsEndpointSource]:
    """The daemon's source class, stamping scrapes with the simulated clock instead of time.time()."""

    class Stamped(cls):  # type: ignore[valid-type,misc]
        def scrape(self) -> tuple[str, float]:
            text, _ = super().scrape()
            return text, clock.time()

    Stamped.__name__ = f"{cls.__name__}OnSimClock"
    return Stamped


@dataclass
class Machine:
    clock: ManualClock
    sim: SimNVML
    agent: Agent
    sources: dict[str, MetricsEndpointSource]
    stores: dict[str, Store]
    buffers: dict[str, WriteBuffer]
    urls: dict[str, str] = field(default_factory=dict)

    def step(self, seconds: float) -> None:
        """Time passes; the agent polls NVML; each source scrapes its endpoint once."""
        self.clock.advance(seconds)
        self.agent.poll_once()
        for name, src in self.sources.items():
            src.collect(self.buffers[name])  # type: ignore[arg-type]

    def flush(self) -> None:
        for b in self.buffers.values():
            b.flush()

    def uuids(self) -> list[str]:
        return [g.uuid for g in self.sim.gpus]


@contextmanager
def machine(tmp: Path, spec: dict[str, Any], t0: float, **dcgm_kw: Any) -> Iterator[Machine]:
    clock = ManualClock(t0)
    sim = SimNVML(parse_spec(spec, "crosscheck spec"), clock=clock)
    with ExitStack() as stack:
        agent = Agent(sim, clock=clock, poll_interval=1.0, sysfs_root=None, backend="simulated",
                      vm_identity=VmIdentity("cc-vm", VM_UUID, swap_uuid_bytes(VM_UUID), "simulated"))
        agent.start()
        stack.callback(agent.close)
        server = AgentHTTPServer(agent, "127.0.0.1:0")
        server.serve_in_thread()
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        sim.nvmlInit()  # the exporters are NVML clients of their own
        stack.callback(sim.nvmlShutdown)
        dcgm = stack.enter_context(ExporterServer(lambda: dcgm_exporter_text(sim, **dcgm_kw)))
        smi = stack.enter_context(ExporterServer(lambda: nvidia_gpu_exporter_text(sim)))
        urls = {"agent": f"{server.url}/metrics", "dcgm": dcgm.url, "nvidia_gpu_exporter": smi.url}
        classes = {"agent": AgentSource, "dcgm": DcgmExporterSource, "nvidia_gpu_exporter": NvidiaGpuExporterSource}
        sources = {n: on_clock(classes[n], clock)(urls[n], timeout=10) for n in SOURCES}
        for s in sources.values():
            stack.callback(s.close)
        stores = {n: Store(tmp / n) for n in SOURCES}
        buffers = {n: WriteBuffer(stores[n]) for n in SOURCES}
        m = Machine(clock, sim, agent, sources, stores, buffers, urls)
        try:
            yield m
        finally:
            m.flush()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def report_json(data_dir: Path, t_from: float, t_to: float, out: Path, config: Path | None = None) -> dict[str, Any]:
    """``accelmon report --json`` over ``data_dir`` as a separate process (``--config`` if given)."""
    cfg = ["--config", str(config)] if config is not None else []
    r = subprocess.run([*CLI, *cfg, "--data-dir", str(data_dir), "report", "--json", "--from", iso(t_from),
                        "--to", iso(t_to), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def trace_mean(sim: SimNVML, index: int, t_from: float, t_to: float) -> float:
    """The trace's time-weighted mean over (t_from, t_to]: the mean of what the driver's samples
    (one per ``sample_period_s``, each for the period ending at its timestamp) report."""
    p = sim.period_us
    k0, k1 = int(t_from * 1e6) // p + 1, int(t_to * 1e6) // p
    g = sim.gpus[index]
    vals = [round(g.util_at(k * p / 1e6)) for k in range(k0, k1 + 1)]
    return sum(vals) / len(vals)
