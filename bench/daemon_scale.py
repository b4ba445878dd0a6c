"""Daemon at scale: a seeded vcsim with 2,000 GPU VMs and one simulated agent per VM.

    python bench/daemon_scale.py [--vms 2000] [--farms 2] [--workers 32]

* vcsim (the seeded govmomi simulator, TLS) with ``--vms`` VMs, all with GPUs.
  Its guest IPs are on loopback (``guest_ip_prefix="127."``: 127.32.x.y).
* ``--farms`` agent-farm processes serve the simulated agents (accelmon's real guest agent code
  over the simulated NVML, one agent per powered-on GPU VM, reporting that VM's BIOS UUID), each
  on its VM's own guest IP at the agent port, ``http://<guest IP>:<port>/metrics``. Agents poll
  NVML before each cycle (as real agents do on their own machines), so the farms only serve
  bytes during it.
* The daemon (accelmon.daemon.service.Daemon, in this process) with agent discovery on and no
  static target: the real vCenter source finds the agents (GPU VMs' guest IPs), the real agent
  source scrapes them, the join is by BIOS UUID; rows go to a temporary store.

Cycle 1 is cold (vCenter first inventory, discovery, agent identities). Cycle 2, the measured one, is a
steady-state 10 s cycle: vCenter inventory delta + perf + events and every agent scraped, in
parallel on the daemon's source pool, then the write buffer flushed. Then ``/metrics`` is
fetched five times by curl (another process, as Prometheus is; urllib without curl), without
gzip (and three times with, for information).

Last line: ``cycle_s=<C> cpu_pct=<P> rss_mb=<M> scrape_ms=<S>``; C is cycle 2's wall time,
P the daemon process's CPU time during it as a percentage of one core (200 = both cores),
M its resident memory after the cycle, S the median /metrics time. Targets: C < 5, S < 250.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any


# ---------------------------------------------------------------------------- agent farm
def _agent_specs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, vm in enumerate(v for v in manifest["vms"] if v["gpus"] and v["power_state"] == "poweredOn"):
        gpus = []
        for g in vm["gpus"]:
            if g["kind"] == "vgpu":
                gpus.append({"model": "A100-SXM4-40GB", "mode": "vgpu", "vgpu_profile": "A100-4C",
                             "trace": "bursty_inference"})
            else:
                gpus.append({"model": "A100-SXM4-40GB", "trace": "bursty_inference"})
        out.append({"seed": i + 1, "vm_bios_uuid": vm["bios_uuid"], "hostname": vm["name"], "gpu": gpus,
                    "ip": vm.get("ip")})
    return out


def _farm(specs: list[dict[str, Any]], port: int, conn: Any) -> None:
    """One farm process: build the agents, serve each one's last rendered /metrics on its VM's
    guest IP (127.x, from vcsim's ``guest_ip_prefix``) at the agent port, refresh on request.

    Served like the real agent (collector/agent/server.py): HTTP/1.1 keep-alive, headers and
    body in one write (no Nagle/delayed-ACK stall), gzip level 1 when asked. One asyncio loop
    with one listening socket per agent (a thread per connection would be 1,000 threads)."""
    import asyncio

    from accelmon.collector.agent.agent import Agent
    from accelmon.collector.agent.identity import VmIdentity, swap_uuid_bytes
    from accelmon.collector.agent.metrics import make_registry, render
    from accelmon.sim.nvml import SimNVML
    from accelmon.sim.spec import parse_spec

    agents = []
    for raw in specs:
        sim = SimNVML(parse_spec({k: v for k, v in raw.items() if k != "ip"}, "bench"))
        u = raw["vm_bios_uuid"]
        a = Agent(sim, clock=sim.clock, poll_interval=10.0, sysfs_root=None, backend="simulated",
                  vm_identity=VmIdentity(raw["hostname"], u, swap_uuid_bytes(u), "simulated"))
        a.start()
        agents.append(a)
    regs = [make_registry(a) for a in agents]
    plain: list[bytes] = [b""] * len(agents)
    gzipped: list[bytes] = [b""] * len(agents)

    def refresh() -> None:
        for i, a in enumerate(agents):
            a.poll_once()
            body = render(regs[i])
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            gz = gzip.compress(body, compresslevel=1)
            plain[i] = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
            gzipped[i] = head + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gz) + gz

    def handler(i: int) -> Any:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    writer.write(gzipped[i] if b"gzip" in head.lower() else plain[i])
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
                    asyncio.CancelledError):
                pass
            finally:
                writer.close()
        return serve

    async def main() -> None:
        servers = [await asyncio.start_server(handler(i), raw["ip"], port, backlog=64)
                   for i, raw in enumerate(specs)]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, refresh)
        conn.send("ready")
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd == "refresh":
                await loop.run_in_executor(None, refresh)
                conn.send("ok")
            else:
                for srv in servers:
                    srv.close()
                conn.send("bye")
                os._exit(0)  # open keep-alive connections need no goodbye

    try:
        asyncio.run(main())
    except OSError as e:
        conn.send(f"error: {e}")


# ---------------------------------------------------------------------------- daemon side
def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scrape(url: str, gzip: bool = False) -> float:
    """Seconds for one GET of /metrics by curl (another process, as Prometheus is), else urllib."""
    curl = shutil.which("curl")
    if curl:
        out = subprocess.run([curl, "-sf", "-o", "/dev/null", "-w", "%{time_total}", *(["--compressed"] if gzip else []),
                              url], capture_output=True, text=True, timeout=60, check=True).stdout
        return float(out)
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        r.read()
    return time.perf_counter() - t


def _cycle(d: Any, runners: list[Any], workers: int) -> tuple[float, float, int]:
    from accelmon.daemon import housekeeping

    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futs = [pool.submit(r) for r in runners]
        wait(futs)
    ok = sum(1 for f in futs if f.result() is True)
    housekeeping.flush(d.buffer, d.state)
    return time.perf_counter() - t0, time.process_time() - c0, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vms", type=int, default=2000)
    ap.add_argument("--farms", type=int, default=2)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    from accelmon.config import parse
    from accelmon.daemon.service import Daemon
    from accelmon.demo.prometheus import free_port
    from accelmon.exporter.server import MetricsApp, serve
    from accelmon.sim.vcsim import Vcsim
    from accelmon.store import Store

    hosts = max(2, -(-args.vms // 8))  # 8 GPUs per host
    clusters = max(1, -(-hosts // 25))
    t = time.perf_counter()
    sim = Vcsim.start(clusters=clusters, hosts_per_cluster=-(-hosts // clusters), vms=args.vms,
                      gpu_vm_ratio=1.0, seed=args.seed, guest_ip_prefix="127.")
    print(f"vcsim: {args.vms} VMs on {clusters}x{-(-hosts // clusters)} hosts, started in "
          f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
    farms: list[tuple[Any, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="accelmon-bench-"))
    try:
        specs = [sp for sp in _agent_specs(sim.manifest) if sp["ip"]]
        t = time.perf_counter()
        ctx = mp.get_context("spawn")
        chunks = [specs[i :: args.farms] for i in range(args.farms)]
        port = free_port()
        for chunk in chunks:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_farm, args=(chunk, port, child), daemon=True)
            p.start()
            farms.append((p, parent))
        for _p, conn in farms:
            msg = conn.recv()
            if msg != "ready":
                raise SystemExit(f"agent farm: {msg}")
        n_gpus = sum(len(s["gpu"]) for s in specs)
        print(f"agents: {len(specs)} agents with {n_gpus} GPUs on their guest IPs, port {port}, in {args.farms} "
              f"farm process(es), ready in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        (tmp / "vc.pw").write_text(sim.password)
        cfg = parse({
            "vcenter": [{"name": "vc-bench", "url": sim.url, "user": sim.user, "password_file": str(tmp / "vc.pw"),
                         "ca_bundle": str(sim.ca_file), "timeout": "60s"}],
            "agents": {"discovery": True, "port": port, "scrape_interval": "10s", "timeout": "10s"},
            "report": {"enabled": False},
            "exporter": {"listen": f"127.0.0.1:{free_port()}"},
        }, "bench", env={})
        d = Daemon(cfg, Store(tmp / "data"), source_workers=args.workers)
        d.prepare()
        vc = [r for r in d.runners.values() if r.kind == "vcenter"]

        t = time.perf_counter()
        for r in vc:  # cold: first inventory (full) and discovery, perf, events
            r()
        cold_vc = time.perf_counter() - t
        agents = [r for r in d.runners.values() if r.kind == "agent"]
        cold, _, ok1 = _cycle(d, agents, args.workers)
        print(f"cycle 1 (cold): vcenter + discovery {cold_vc:.2f} s ({len(agents)} agents found), agents "
              f"{cold:.2f} s ({ok1}/{len(agents)} ok)", file=sys.stderr)

        for _p, conn in farms:
            conn.send("refresh")
        for _p, conn in farms:
            conn.recv()
        time.sleep(1.0)
        cycle_s, cpu_s, ok2 = _cycle(d, vc + agents, args.workers)
        failed = [r for r in vc + agents if r.health.success is not True]
        print(f"cycle 2 (steady): {cycle_s:.2f} s wall, {cpu_s:.2f} s CPU, {ok2}/{len(vc) + len(agents)} polls ok"
              + (f"; first failure: {failed[0].health.last_error}" if failed else ""), file=sys.stderr)
        for r in vc:
            print(f"  {r.job_name}: {r.health.last_duration_s:.2f} s", file=sys.stderr)
        rss = _rss_mb()

        app = MetricsApp(d.state, cfg.exporter)
        srv = serve(app, cfg.exporter.listen)
        url = f"http://127.0.0.1:{srv.port}/metrics"
        times = [_scrape(url) for _ in range(5)]  # from another process, like Prometheus
        gz = [_scrape(url, gzip=True) for _ in range(3)]
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = resp.read()
        srv.stop()
        scrape_ms = statistics.median(times) * 1000
        text = body.decode()
        busy = [ln for ln in text.splitlines() if ln.startswith("accelmon_gpu_busy_seconds_total{")]
        joined = [ln for ln in busy if 'vm_name=""' not in ln]
        print(f"/metrics: {len(body) / 1e6:.1f} MB, {text.count(chr(10))} lines, {len(busy)} GPUs "
              f"({len(joined)} joined to their VM); scrapes {', '.join(f'{x * 1000:.0f}' for x in times)} ms, "
              f"with gzip {', '.join(f'{x * 1000:.0f}' for x in gz)} ms", file=sys.stderr)
        d.stop(grace_s=0.5, flush_s=5)
        rows = json.dumps(d.state.store.rows_written_total, sort_keys=True)
        print(f"rows written: {rows}", file=sys.stderr)
        print(f"cycle_s={cycle_s:.2f} cpu_pct={cpu_s / cycle_s * 100:.0f} rss_mb={rss:.0f} scrape_ms={scrape_ms:.0f}")
        return 0
    finally:
        for _p, conn in farms:
            try:
                conn.send("stop")
            except OSError:
                pass
        for p, _conn in farms:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        sim.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
