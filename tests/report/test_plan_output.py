"""``accelmon plan``: the plan alone as JSON or as a PowerCLI script a person reviews and runs.

The store is the analytics test estate plus one more host whose only GPU VM is a light vGPU
(named with a quote and wildcard characters): the plan empties that host, so every kind of
line a plan here can hold appears, and every name is checked against the inventory."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from accelmon.analytics import actions
from accelmon.config import parse
from accelmon.report.cli import generate
from accelmon.report.plan import run_plan
from accelmon.store.writer import Store
from tests.analytics.estate import GIB, HOSTS, SNAP, T0, VC, Vm, vms, write_agents_and_samples, write_estate

ODD = "infer-d o'neil [x]*"  # PowerShell must see exactly this name
EXTRA_HOST = ("host-31", "esx-c1.lab", "cluster-c")
_LIT = re.compile(r"-(?:Name|Value) '((?:[^'\u2018\u2019\u201a\u201b]|['\u2018\u2019\u201a\u201b]{2})*)'")


def _extra(st: Store) -> None:
    h, name, cl = EXTRA_HOST
    snap = {"snapshot_ts": SNAP, "vcenter_uuid": VC}
    st.append("inv_host", [{**snap, "host_moref": h, "host_name": name, "cluster_moref": "domain-c3",
                            "cluster_name": cl, "connection_state": "connected", "power_state": "poweredOn",
                            "cpu_cores": 64, "memory_bytes": 1024 * GIB, "numa_node_count": 1, "vgpu_mode": "sameSize"}])
    st.append("inv_numa_node", [{**snap, "host_moref": h, "node_id": 0, "cpu_ids": list(range(128)),
                                 "memory_bytes": 1024 * GIB, "pci_ids": ["0000:3b:00.0"]}])
    st.append("inv_host_pci", [{**snap, "host_moref": h, "pci_id": "0000:3b:00.0", "vendor_id": 0x10DE,
                                "device_id": 0x20F1, "vendor_name": "NVIDIA", "device_name": "NVIDIA A100-PCIE-40GB",
                                "numa_node": 0, "passthru_enabled": False, "fb_bytes": 40 * GIB}])
    v = Vm("vm-601", ODD, h, [("0000:3b:00.0", "vgpu", 0, "grid_a100-10c")], 3.0, bios="4221ffff-aaaa-bbbb-cccc-00000000ffff",
           gpu_uuids=["GPU-ffff-0000-1111-2222-00000000ffff"], guest_buses=[0x13])
    st.append("inv_vm", [{**snap, "vm_moref": v.moref, "vm_instance_uuid": "5003ffff-aaaa-bbbb-cccc-00000000ffff",
                          "vm_bios_uuid": v.bios, "vm_name": v.name, "host_moref": h, "cluster_name": cl,
                          "power_state": "poweredOn", "num_cpu": 4, "cores_per_socket": 4, "memory_bytes": 16 * GIB}])
    st.append("inv_vm_gpu", [{**snap, "vm_moref": v.moref, "device_key": 13000, "backing": "vgpu",
                              "host_pci_id": "0000:3b:00.0", "vgpu_profile": "grid_a100-10c",
                              "vgpu_fb_bytes": 10 * GIB, "host_numa_node": 0, "pci_slot_number": 192}])
    write_agents_and_samples(st, [v], seed=9)
    st.append("host_power_sample", [{"ts": T0 + dt.timedelta(hours=1), "vcenter_uuid": VC, "host_moref": h, "interval_seconds": 300,
                                     "power_watts": 640.0, "energy_joules": None}])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    st = Store(tmp_path_factory.mktemp("plan"))
    write_estate(st)
    _extra(st)
    return st


def _literal(s: str) -> str:
    """A PowerShell single-quoted literal's value, then a -Name pattern's backtick escapes undone."""
    for q in "'\u2018\u2019\u201a\u201b":
        s = s.replace(q + q, q)
    return re.sub(r"`([*?\[\]`])", r"\1", s)


def test_powercli_script_is_comments_and_vocabulary_cmdlets_with_inventory_names(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "plan.ps1"
    exe = Path(sys.executable).with_name("accelmon")
    r = subprocess.run([str(exe), "--data-dir", str(store.root), "plan", "--since", "all", "--format", "powercli",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    text = out.read_text(encoding="utf-8")
    lines = text.splitlines()
    head = "\n".join(lines[:8])
    assert "accelmon executes nothing" in head and "REVIEW BEFORE RUNNING" in head
    assert "2025-01-06" in head and "Generated" in head
    names = {v.name for v in vms()} | {ODD} | {n for n, _ in HOSTS.values()} | {EXTRA_HOST[1]}
    prefixes = {cmd for _api, cmd in actions.VOCABULARY.values()}
    code = [ln for ln in lines if ln and not ln.startswith("#")]
    assert code, text
    used = set()
    for ln in code:
        assert any(ln.startswith(p) for p in prefixes), ln
        for m in re.finditer(r"-Name '((?:[^']|'')*)'", ln):
            if m.group(1) != "numa.nodeAffinity":
                assert _literal(m.group(1)) in names, ln
                used.add(_literal(m.group(1)))
    # the extra host is emptied: its VM leaves, the host goes to maintenance and standby
    assert ODD in used and EXTRA_HOST[1] in used
    assert f"Set-VMHost -VMHost (Get-VMHost -Name '{EXTRA_HOST[1]}') -State Maintenance" in code
    assert f"Suspend-VMHost -VMHost (Get-VMHost -Name '{EXTRA_HOST[1]}')" in code
    assert "Move-VM -VM (Get-VM -Name 'infer-d o''neil `[x`]`*') -Destination" in text
    # each step: a comment in words right before its one line
    steps = [i for i, ln in enumerate(lines) if ln.startswith("# Step ")]
    assert len(steps) == len(code)
    for i in steps:
        j = next(k for k in range(i + 1, len(lines)) if not lines[k].startswith("#"))
        assert all(lines[k].startswith("#   ") for k in range(i + 1, j))


def test_plan_json_is_the_reports_plan_and_savings_are_emptied_hosts_only(store: Store, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse({}, "<test>", env={})
    assert run_plan(store, cfg, fmt="json", since="all") == 0
    doc = json.loads(capsys.readouterr().out)
    plan = doc["plan"]
    _a, report, _out = generate(store, cfg, since="all", out_dir=tmp_path / "r")
    same = {k: v for k, v in report["consolidation"].items()}
    assert plan == same  # the same analysis, not a report file read back
    assert plan["freed_hosts"] == [EXTRA_HOST[1]] and plan["emptied_hosts"][0]["watts"] == 640.0
    assert plan["watts_saved"] == sum(h["watts"] for h in plan["emptied_hosts"] if h["watts"] is not None)
    freed_elsewhere = [g for g in plan["freed_gpus"] if not g.startswith(EXTRA_HOST[1] + "/")]
    assert plan["freed_capacity"]["gpu_ids"] == sorted(freed_elsewhere) and freed_elsewhere
    for s in plan["steps"]:
        api, cmd = actions.VOCABULARY[s["action"]]
        assert s["api"].startswith(api) and s["powercli"].startswith(cmd) and s["preconditions"]
        assert s["evidence"]["window"] == plan["window"]
    html = (tmp_path / "r" / "report.html").read_text()
    assert f"saves {plan['watts_saved']:.0f} W" in html and "Freed capacity" in html
    assert f"{plan['freed_capacity']['gpus']} GPU(s)" in html
    from html import escape
    assert all(escape(s["powercli"]) in html for s in plan["steps"])


def test_bad_format_is_one_line(store: Store) -> None:
    exe = Path(sys.executable).with_name("accelmon")
    r = subprocess.run([str(exe), "--data-dir", str(store.root), "plan", "--format", "bash"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "accelmon: --format: must be json or powercli, not 'bash'"
