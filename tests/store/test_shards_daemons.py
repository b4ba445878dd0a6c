"""Two real daemons (`accelmon run`) against two seeded vCenter simulators write their own shards of
one store root while a third process reads the union; the report covers both estates; `kill -9` of
one daemon leaves the other's data and the union readable (docs/store.md, "Sharded writers")."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelmon.sim.vcsim import Vcsim
from tests.daemon.procs import CLI, Agent, Daemon, wait_until

PROCS = str(Path(__file__).with_name("_procs.py"))
ESTATE = {"clusters": 1, "hosts_per_cluster": 2, "vms": 8, "gpu_vm_ratio": 0.5}


def _site(tmp: Path, sim: Vcsim, shard: str, data: Path) -> tuple[Daemon, Agent, str]:
    vm = next(v for v in sim.manifest["vms"] if v["power_state"] == "poweredOn" and len(v["gpus"]) == 1)
    agent = Agent(tmp, shard, bios_uuid=vm["bios_uuid"], hostname=vm["name"],
                  gpus=[{"model": "A100-SXM4-40GB", "trace": "idle_allocated"}]).start()
    pw = tmp / f"{shard}.password"
    pw.write_text(sim.password + "\n")
    d = Daemon(tmp, {
        "vcenter": [{"name": shard, "url": sim.url, "user": sim.user, "password_file": str(pw),
                     "ca_bundle": str(sim.ca_file), "inventory_interval": "5s", "perf_interval": "5s",
                     "events_interval": "10s"}],
        "agents": {"discovery": False, "static": [agent.url], "scrape_interval": "1s"},
        "intervals": {"flush": "1s", "compaction": "4s"}, "report": {"enabled": False},
        "store": {"shard": shard},
    }, data, name=f"daemon-{shard}")
    return d, agent, vm["name"]


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--data-dir", str(data), *args], capture_output=True, text=True, timeout=180)


def _counts(data: Path) -> dict[str, int]:
    r = _cli(data, "sql", "-f", "json", "SELECT shard, count(*) AS n FROM gpu_sample GROUP BY shard")
    assert r.returncode == 0, r.stderr
    return {x["shard"]: x["n"] for x in json.loads(r.stdout)}


def test_two_daemons_write_their_shards_while_a_reader_reads_the_union(
    vcsim_factory: Callable[..., Vcsim], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    sims = [vcsim_factory(**ESTATE, seed=21), vcsim_factory(**ESTATE, seed=22)]
    (a, agent_a, vm_a), (b, agent_b, vm_b) = (_site(tmp_path, sims[0], "site-a", data),
                                               _site(tmp_path, sims[1], "site-b", data))
    stop_file = tmp_path / "stop-reader"
    reader: subprocess.Popen[str] | None = None
    try:
        a.start()
        wait_until(lambda: (data / "accelmon.duckdb").is_file(), 30, "the catalog")
        # the reader holds the catalog open from before site-b exists: the views' globs find it anyway
        reader = subprocess.Popen([sys.executable, PROCS, "shard_reader", str(data / "accelmon.duckdb"),
                                   str(stop_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        b.start()
        wait_until(lambda: _counts(data).keys() >= {"site-a", "site-b"}, 60, "samples of both shards")
        time.sleep(6)  # a few flush and compaction cycles of both, under the reader
        before_kill = _counts(data)

        assert a.stop(signal.SIGKILL) == -signal.SIGKILL
        after_kill = wait_until(lambda: (c := _counts(data))["site-b"] > before_kill["site-b"] and c, 30,
                                "site-b writing on after site-a's kill")
        assert after_kill["site-a"] >= before_kill["site-a"]  # the killed shard's data is all there
        stop_file.touch()
        out, err = reader.communicate(timeout=60)
        reader = None

        check = _cli(data, "store", "check")
        report = _cli(data, "report", "--since", "all", "--out", str(tmp_path / "report"))
        assert b.stop() == 0
    finally:
        stop_file.touch()
        if reader is not None:
            reader.kill()
            reader.wait()
        for p in (a, b, agent_a, agent_b):
            p.stop()

    lines = out.splitlines()
    assert lines[0] == "open" and not [ln for ln in lines if ln.startswith("ERROR")], err[-2000:] + out[-2000:]
    seen: list[dict[str, Any]] = [json.loads(ln) for ln in lines[1:] if ln.startswith("{")]
    assert len(seen) >= 5 and any(s.keys() >= {"site-a", "site-b"} for s in seen)
    series = {s: [c[s][0] for c in seen if s in c] for s in ("site-a", "site-b")}
    for prev, cur in zip(seen, seen[1:], strict=False):
        for shard, (n, distinct) in cur.items():
            assert n == distinct, f"duplicates in {shard}: {cur}"  # compaction swaps never show both generations
            assert n >= prev.get(shard, [0])[0], f"{shard} went back: {prev} -> {cur}; {series}"

    # `store check`: clean, or only leftovers of the killed shard
    problems = [ln for ln in check.stdout.splitlines() if ": " in ln and ("unreadable" in ln or "leftover" in ln)]
    assert check.returncode == 0 or all("shard=site-a" in ln for ln in problems), check.stdout + check.stderr
    assert "Traceback" not in check.stderr

    # the report covers both estates: each site's GPU, with its VM, from its own vCenter
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr[-3000:]
    doc = json.loads((tmp_path / "report" / "findings.json").read_text())
    r = _cli(data, "sql", "-f", "json", "SELECT DISTINCT shard, gpu_uuid FROM gpu_sample WHERE date > '1970-01-01'")
    assert r.returncode == 0, r.stderr
    per_shard: dict[str, set[str]] = {}
    for x in json.loads(r.stdout):
        per_shard.setdefault(x["shard"], set()).add(x["gpu_uuid"])
    assert per_shard.keys() == {"site-a", "site-b"} and all(len(g) == 1 for g in per_shard.values())
    stored = per_shard["site-a"] | per_shard["site-b"]
    assert len(stored) == 2  # each site's own GPU
    in_report = {g["gpu"]: g.get("vm_name") for g in doc["gpus"]}
    assert stored <= in_report.keys(), (stored, in_report)
    assert {in_report[g] for g in stored} == {vm_a, vm_b}  # each joined to its VM
