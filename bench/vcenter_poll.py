"""Benchmark: accelmon's vCenter poll vs the peer vmware-exporter 0.18.4 on a 10,000-VM estate.

    python bench/vcenter_poll.py [--vms 10000] [--clusters 10] [--hosts-per-cluster 8] [--port 443]

Starts one seeded simulator (accelmon.sim.vcsim) with TLS on 127.0.0.1:443 (the peer always
connects to https port 443), then on that same simulator:

* accelmon full poll: a fresh ``VCenterSource`` (login, inventory with GPU devices and NUMA
  facts, power and energy of every powered-on GPU VM and every host), twice, best of two;
* accelmon steady-state poll: the same source polled again with nothing changed, one
  realtime interval (20 s) after the previous poll, so each poll reads the one new power
  sample of every entity (inventory changes arrive through the WaitForUpdatesEx long-poll
  thread), median of three;
* the peer: ``vmware_exporter`` from its own venv (bench/.venv-vmware-exporter, created here
  if missing: vmware-exporter==0.18.4, twisted==22.10.0, requests), collecting VMs, VM guests
  and hosts (datastores and snapshots off: accelmon does not collect those); one scrape of
  ``/metrics`` is one full collection; best of two.

The simulator puts vSphere tags (owner, team) and custom attributes (Owner, Team) on every VM
(``--no-tags``: only the default ownership seeding): accelmon's poll includes resolving the GPU
VMs' owners, tags read in bulk (one tagging-API call per poll, category/tag names cached).

Last line: ``speedup_vs_vmware_exporter=<X> accelmon_s=<A> peer_s=<P> steady_s=<S> ...``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / "bench" / ".venv-vmware-exporter"
PEER_PKGS = ["vmware-exporter==0.18.4", "twisted==22.10.0", "requests"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_peer_venv() -> Path:
    exe = PEER_VENV / "bin" / "vmware_exporter"
    if exe.exists():
        return exe
    log(f"creating {PEER_VENV} ({' '.join(PEER_PKGS)})")
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", *PEER_PKGS], check=True)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_accelmon_full(sim: object, data_root: Path, n: int) -> tuple[list[float], list[float], object]:
    from accelmon.collector.vcenter.source import VCenterSource
    from accelmon.config import VCenterConfig
    from accelmon.store.writer import Store

    cfg = VCenterConfig(url=sim.url, user=sim.user, password=sim.password, ca_bundle=sim.ca_file)  # type: ignore[attr-defined]
    walls, cpus = [], []
    src = None
    for i in range(n):
        if src is not None:
            src.close()
        store = Store(data_root / f"full-{i}")
        src = VCenterSource(cfg)
        c0, t0 = time.process_time(), time.perf_counter()
        res = src.poll_inventory_and_perf(store)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        inv = src.last_inventory
        log(f"accelmon full poll {i + 1}: {walls[-1]:.2f} s (cpu {cpus[-1]:.2f} s), rows {res.rows}, "
            f"{inv.bytes / 1e6:.0f} MB read, {inv.skipped} VMs without GPU not parsed")  # type: ignore[union-attr]
        src._bench_store = store  # type: ignore[attr-defined]
    return walls, cpus, src


def time_accelmon_steady(src: object, n: int, pause: float) -> list[float]:
    out = []
    store = src._bench_store  # type: ignore[attr-defined]
    for i in range(n):
        time.sleep(pause)
        t0 = time.perf_counter()
        res = src.poll_inventory_and_perf(store)  # type: ignore[attr-defined]
        out.append(time.perf_counter() - t0)
        log(f"accelmon steady poll {i + 1}: {out[-1] * 1000:.0f} ms, rows {res.rows}, "
            f"inventory {src.last_inventory.bytes} B")  # type: ignore[attr-defined]
    return out


def time_peer(sim: object, exe: Path, n: int) -> list[float]:
    port = free_port()
    env = dict(
        os.environ,
        VSPHERE_HOST="127.0.0.1",
        VSPHERE_USER=sim.user,  # type: ignore[attr-defined]
        VSPHERE_PASSWORD=sim.password,  # type: ignore[attr-defined]
        VSPHERE_IGNORE_SSL="True",
        VSPHERE_COLLECT_VMS="True",
        VSPHERE_COLLECT_VMGUESTS="True",
        VSPHERE_COLLECT_HOSTS="True",
        VSPHERE_COLLECT_DATASTORES="False",
        VSPHERE_COLLECT_SNAPSHOTS="False",
    )
    logf = open(Path(tempfile.gettempdir()) / "vmware_exporter-bench.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(exe), "-p", str(port), "-a", "127.0.0.1"], env=env, stdout=logf,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("vmware_exporter did not start (see its log)") from None
                time.sleep(0.2)
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=600).read()
            out.append(time.perf_counter() - t0)
            series = sum(1 for ln in body.splitlines() if ln and not ln.startswith(b"#"))
            power = sum(1 for ln in body.splitlines() if ln.startswith(b"vmware_vm_power") or b"power" in ln[:40])
            log(f"peer scrape {i + 1}: {out[-1]:.2f} s, {series} series ({power} power-related), "
                f"{len(body) / 1e6:.1f} MB")
            if series < 100:
                raise RuntimeError(f"peer returned only {series} series: {body[:300]!r}")
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        logf.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vms", type=int, default=10_000)
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--hosts-per-cluster", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--port", type=int, default=443, help="the peer only speaks to port 443")
    ap.add_argument("--peer-runs", type=int, default=2)
    ap.add_argument("--full-runs", type=int, default=2)
    ap.add_argument("--steady-runs", type=int, default=3)
    ap.add_argument("--steady-pause", type=float, default=20.0, help="seconds between steady polls")
    ap.add_argument("--no-tags", action="store_true", help="no owner tags/attributes on every VM")
    a = ap.parse_args()

    from accelmon.sim.vcsim import Vcsim

    exe = ensure_peer_venv()
    log(f"starting the simulator: {a.clusters} clusters x {a.hosts_per_cluster} hosts, {a.vms} VMs, "
        f"https://127.0.0.1:{a.port}")
    sim = Vcsim.start(clusters=a.clusters, hosts_per_cluster=a.hosts_per_cluster, vms=a.vms, seed=a.seed,
                      port=a.port, vmotions=0, tag_all_vms=not a.no_tags)
    try:
        summ = sim.manifest["summary"]
        log(f"simulator up in {sim.start_seconds:.1f} s, {summ['vms']} VMs, {summ['gpu_vms']} GPU VMs, "
            f"{summ['hosts']} hosts, RSS {sim.rss_bytes() / 1e6:.0f} MB")
        with tempfile.TemporaryDirectory(prefix="accelmon-bench-") as tmp:
            walls, cpus, src = time_accelmon_full(sim, Path(tmp), a.full_runs)
            steady = time_accelmon_steady(src, a.steady_runs, pause=a.steady_pause)
            tagging = getattr(src, "tagging", None)
            tag_calls = tagging.calls if tagging is not None else 0
            src.close()  # type: ignore[attr-defined]
        peer = time_peer(sim, exe, a.peer_runs)
    finally:
        sim.stop()
    acc = min(walls)
    st = statistics.median(steady)
    p = min(peer)
    print(
        f"speedup_vs_vmware_exporter={p / acc:.1f} accelmon_s={acc:.2f} peer_s={p:.2f} steady_s={st:.3f} "
        f"steady_cheaper_x={acc / st:.1f} accelmon_cpu_s={min(cpus):.2f} vms={a.vms} "
        f"tags_on_every_vm={int(not a.no_tags)} tag_api_calls={tag_calls}"
    )


if __name__ == "__main__":
    main()
