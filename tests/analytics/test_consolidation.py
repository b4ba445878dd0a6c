"""Property tests: every plan obeys the placement rules, whatever the estate."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, Phase, find, given, settings, target
from hypothesis import strategies as st

from accelmon.analytics import actions
from accelmon.analytics.consolidation import (
    HOURS_PER_MONTH,
    MIG_SLICES,
    HostCap,
    PGpu,
    Plan,
    Tenant,
    plan,
)
from accelmon.analytics.profiles import GIB, Profile, load, parse_profile_name

TABLE = load()


@st.composite
def estates(draw):
    hosts, gpus, tenants = [], [], []
    node_use: dict[tuple[str, int], int] = {}
    mem_use: dict[str, int] = {}
    nhosts = draw(st.integers(1, 4))
    vm = 0
    for h in range(nhosts):
        host = f"host-{h}"
        nodes = draw(st.integers(1, 2))
        for k in range(draw(st.integers(1, 6))):
            model = draw(st.sampled_from(["a100-40", "a100-40", "a100-40", "h100"]))
            mode = draw(st.sampled_from(["sameSize", "mixedSize"]))
            g = PGpu(
                gpu_id=f"{host}/0000:{k:02x}:00.0", host=host,
                numa_node=draw(st.one_of(st.none(), st.integers(0, nodes - 1))) if k == 3 else k % nodes,
                model=model, fb_total_bytes=TABLE.models and next(m.fb_total_bytes for m in TABLE.models
                                                                  if m.key == model),
                vgpu_mode=mode, mixed_series_ok=draw(st.booleans()),
                idle_power_watts=draw(st.one_of(st.none(), st.floats(20, 120))),
            )
            gpus.append(g)
            kind = draw(st.sampled_from(["empty", "passthrough", "time_sliced", "time_sliced", "mig"]))
            placed: list[Profile] = []
            if kind == "passthrough":
                profs = [None]
            elif kind == "empty":
                profs = []
            else:
                cands = [p for p in TABLE.for_model(model) if p.mode == kind]
                profs = []
                first = draw(st.sampled_from(cands))
                for _ in range(draw(st.integers(1, 4))):
                    p = first if mode == "sameSize" or kind == "mig" and draw(st.booleans()) else draw(
                        st.sampled_from(cands))
                    from accelmon.analytics.consolidation import profile_allowed

                    if profile_allowed(g, placed, p):
                        placed.append(p)
                        profs.append(p)
            for p in profs:
                vm += 1
                cpu = draw(st.integers(1, 16))
                mem = draw(st.integers(1, 64)) * GIB
                t = Tenant(
                    vm=f"vm-{vm}", vm_name=f"gpu-vm-{vm}", device_key=13000, gpu_id=g.gpu_id,
                    kind="passthrough" if p is None else "vgpu",
                    profile=None if p is None else p.name,
                    p95_util_percent=draw(st.one_of(st.none(), st.floats(0, 100), st.floats(0, 20), st.floats(0, 20))),
                    mean_util_percent=None,
                    underutilized=draw(st.sampled_from([True] * 8 + [False, None])),
                    fb_hwm_bytes=draw(st.one_of(st.none(), st.integers(0, 40 * GIB), st.integers(0, 8 * GIB))),
                    num_cpu=cpu, memory_bytes=mem, vm_gpu_count=draw(st.sampled_from([1] * 9 + [2])),
                    numa_affinity=draw(st.sampled_from([None, "0", "1", "0,1"])),
                )
                tenants.append(t)
                if g.numa_node is not None:
                    node_use[(host, g.numa_node)] = node_use.get((host, g.numa_node), 0) + cpu
                mem_use[host] = mem_use.get(host, 0) + mem
        node_cores = {n: node_use.get((host, n), 0) + draw(st.integers(0, 48)) for n in range(nodes)}
        hosts.append(HostCap(
            host, mem_use.get(host, 0) + draw(st.integers(0, 256)) * GIB, node_cores,
            power_watts=draw(st.one_of(st.none(), st.floats(200, 1500))),
            baseline_watts=draw(st.one_of(st.none(), st.floats(50, 300))),
            other_vms=draw(st.sampled_from([(), (), (), ("web-1",), None])),
            graphics_policy=draw(st.sampled_from([None, "performance", "consolidation"]))))
    target = draw(st.sampled_from([30.0, 60.0, 90.0]))
    return gpus, tenants, hosts, target


def _check(pl: Plan, gpus, tenants, hosts, target) -> None:
    gmap = {g.gpu_id: g for g in gpus}
    hmap = {h.host: h for h in hosts}
    placed = [(t, g) for g, ts in pl.placement.items() for t, _ in ts]
    assert sorted(t.vm for t, _ in placed) == sorted(t.vm for t in tenants if t.gpu_id in gmap)
    receivers = {m.to_gpu for m in pl.moves}
    for g, ts in pl.placement.items():
        gpu = gmap[g]
        profs = [p for _, p in ts]
        if g not in receivers:
            continue
        assert None not in profs, "a passthrough GPU received tenants"
        assert sum(p.fb_bytes for p in profs) <= gpu.fb_total_bytes, "framebuffer over GPU memory"
        assert len({p.mode for p in profs}) == 1, "time-sliced and MIG mixed"
        for p in profs:
            assert p.model == gpu.model
            n = sum(1 for q in profs if q.name == p.name)
            if p.mode == "mig":
                assert n <= p.max_per_gpu
            elif gpu.vgpu_mode == "mixedSize":
                assert n <= p.max_mixed
            else:
                assert len(profs) <= p.max_per_gpu
        if profs[0].mode == "mig":
            assert sum(p.mig_slices for p in profs) <= MIG_SLICES
        elif gpu.vgpu_mode == "sameSize":
            assert len({p.fb_bytes for p in profs}) == 1, "sizes mixed on a sameSize GPU"
            if not gpu.mixed_series_ok:
                assert len({p.name for p in profs}) == 1, "profiles mixed before vSphere 8.0 U1"
        loads = sum(t.p95_util_percent for t, _ in ts)
        assert loads <= target + 1e-9, "receiving GPU above target utilization"
    for m in pl.moves:
        tg = gmap[m.to_gpu]
        assert m.to_numa_node == tg.numa_node and m.to_host == tg.host, "move not NUMA-local"
        assert m.from_gpu in pl.freed_gpus
        if m.converted:
            t = next(t for t in tenants if t.vm == m.vm)
            assert TABLE.get(tg.model, m.to_profile).fb_bytes >= (t.fb_hwm_bytes or 0) * 1.1
    # node and host capacity where something moved in
    for host, nodes in {(m.to_host, m.to_numa_node) for m in pl.moves}:
        # a VM with n GPU devices is n tenants: each carries 1/n of its vCPUs and memory
        used = sum(t.num_cpu / t.vm_gpu_count for t, g in placed
                   if gmap[g].host == host and gmap[g].numa_node == nodes)
        assert used <= hmap[host].node_cores[nodes] + 1e-9, "NUMA node over its cores"
        mem = sum(t.memory_bytes / t.vm_gpu_count for t, g in placed if gmap[g].host == host)
        assert mem <= hmap[host].memory_bytes + 1e-3
    for g in pl.freed_gpus:
        assert not pl.placement[g], "a freed GPU still has tenants"
        assert any(t.gpu_id == g for t in tenants)
    _check_savings(pl, gmap, hmap, tenants)
    _check_steps(pl, gmap, hmap, tenants)
    assert pl.reason


def _host_watts(h: HostCap, gpus: list[PGpu]) -> float | None:
    if h.power_watts is not None:
        return h.power_watts
    idle = [g.idle_power_watts for g in gpus]
    if h.baseline_watts is None or any(w is None for w in idle):
        return None
    return h.baseline_watts + sum(idle)


def _check_savings(pl: Plan, gmap, hmap, tenants) -> None:
    """Savings = power of the hosts the plan empties, nothing else; freed GPUs elsewhere are capacity."""
    had = {gmap[t.gpu_id].host for t in tenants if t.gpu_id in gmap}
    gpu_free = {h for h in had if all(not pl.placement[g] for g in gmap if gmap[g].host == h)}
    emptied = {h for h in gpu_free if h in hmap and hmap[h].other_vms == ()}
    assert set(pl.freed_hosts) == emptied == {e["host"] for e in pl.emptied_hosts}
    assert {k["host"] for k in pl.hosts_kept_on} == gpu_free - emptied  # other VMs remain, or unknown
    watts = [_host_watts(hmap[h], [g for g in gmap.values() if g.host == h]) for h in sorted(emptied)]
    assert abs(pl.watts_saved - sum(w for w in watts if w is not None)) < 1e-6
    assert pl.unmeasured_emptied_hosts == sum(1 for w in watts if w is None)
    assert abs(pl.kwh_month_saved - pl.watts_saved * HOURS_PER_MONTH / 1000) < 1e-6
    if not emptied:
        assert pl.watts_saved == 0.0
    # every freed GPU is either in an emptied host or freed capacity, never both
    cap = pl.freed_capacity
    assert sorted(cap["gpu_ids"]) == sorted(g for g in pl.freed_gpus if gmap[g].host not in emptied)
    assert cap["gpus"] + sum(1 for g in pl.freed_gpus if gmap[g].host in emptied) == len(pl.freed_gpus)
    assert cap["gpu_hours_month"] == cap["gpus"] * HOURS_PER_MONTH
    assert cap["fb_bytes"] == sum(gmap[g].fb_total_bytes for g in cap["gpu_ids"])


def _check_steps(pl: Plan, gmap, hmap, tenants) -> None:
    """Every step is one action of the vocabulary, with preconditions, its API call and PowerCLI line;
    moves become vSphere actions (no person picks a vGPU's physical GPU)."""
    by_vm = {t.vm: t for t in tenants}
    assert [s.n for s in pl.steps] == list(range(1, len(pl.steps) + 1))
    for s in pl.steps:
        api, cmdlet = actions.VOCABULARY[s.action]
        assert s.api.startswith(api) and s.powercli.startswith(cmdlet), s
        assert s.preconditions and all(isinstance(p, str) and p for p in s.preconditions)
        assert "\n" not in s.powercli and s.words
        assert "gpu" not in s.target, "a step chose a physical GPU"
        if s.action in (actions.CHANGE_VGPU_PROFILE, actions.SET_NUMA_AFFINITY, actions.REASSIGN_PASSTHROUGH):
            assert actions.POWER_OFF in s.preconditions and s.risk["power_off"]
    pos = {(s.action, s.subject): s.n for s in pl.steps}
    for m in pl.moves:
        policy = pos[(actions.SET_GRAPHICS_POLICY, m.to_host)]
        vmo = [s for s in pl.steps if s.action == actions.VMOTION and s.subject == m.vm]
        if m.to_host == m.from_host:
            assert not vmo, "a vMotion within one host"
            if not m.converted:
                assert m.vm_name in next(s for s in pl.steps if s.n == policy).target["power_cycle"]
        else:
            assert [s.target["host"] for s in vmo] == [m.to_host] and policy < vmo[0].n
            assert "stun_p95_seconds" in vmo[0].risk or m.converted
        if m.converted:
            conv = pos[(actions.CHANGE_VGPU_PROFILE, m.vm)]
            assert not vmo or conv < vmo[0].n
        aff = by_vm[m.vm].numa_affinity
        numa = [s for s in pl.steps if s.action == actions.SET_NUMA_AFFINITY and s.subject == m.vm]
        assert [s.target["numa_node"] for s in numa] == ([] if aff == str(m.to_numa_node) else [m.to_numa_node])
        assert set(m.steps) <= {s.n for s in pl.steps} and m.steps
    host_steps = [(s.action, s.subject) for s in pl.steps if s.action in (actions.ENTER_MAINTENANCE,
                                                                           actions.POWER_OFF_HOST)]
    assert host_steps == [(a, h) for h in pl.freed_hosts for a in (actions.ENTER_MAINTENANCE, actions.POWER_OFF_HOST)]
    last_vm = max((s.n for s in pl.steps if s.subject in by_vm), default=0)
    assert all(pos[k] > last_vm for k in host_steps), "a host goes to standby before its VMs have moved"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(estates(), st.randoms())
def test_every_plan_obeys_the_rules_and_is_deterministic(est, rnd: random.Random):
    gpus, tenants, hosts, target_util = est
    p1 = plan(gpus, tenants, hosts, TABLE, target_util_percent=target_util)
    target(float(len(p1.moves)), label="moves")  # steer generation towards estates that consolidate
    target(float(len(p1.freed_hosts)), label="emptied hosts")
    _check(p1, gpus, tenants, hosts, target_util)
    g2, t2 = list(gpus), list(tenants)
    rnd.shuffle(g2)
    rnd.shuffle(t2)
    p2 = plan(g2, t2, hosts, TABLE, target_util_percent=target_util)
    assert p1.to_dict() == p2.to_dict()


def _gpu(i, host="h1", node=0, power=50.0, mode="sameSize"):
    return PGpu(f"{host}/0000:{i:02x}:00.0", host, node, "a100-40", 40 * GIB, mode, True, power)


def _t(vm, gpu, prof, p95, **kw):
    return Tenant(vm=vm, vm_name=vm, device_key=1, gpu_id=gpu.gpu_id, kind="vgpu" if prof else "passthrough",
                  profile=prof, p95_util_percent=p95, underutilized=True, **kw)


def test_a_gpu_freed_in_a_host_that_stays_on_is_capacity_not_watts():
    """The old planner counted the freed GPU's idle power (45 W) as saved: the host stays on and the
    idle GPU in it keeps drawing that power."""
    a, b = _gpu(1, power=40.0), _gpu(2, power=45.0)
    ts = [_t("vm-1", a, "10c", 10), _t("vm-2", a, "10c", 5), _t("vm-3", b, "10c", 8)]
    p = plan([a, b], ts, [HostCap("h1", 1 << 40, {0: 64}, power_watts=700.0)], TABLE)
    assert p.freed_gpus == [b.gpu_id] and len(p.moves) == 1
    assert p.moves[0].vm == "vm-3" and p.moves[0].to_gpu == a.gpu_id
    assert p.watts_saved == 0.0 and p.kwh_month_saved == 0.0 and p.freed_hosts == []
    assert p.freed_capacity == {"gpus": 1, "gpu_ids": [b.gpu_id], "gpu_hours_month": HOURS_PER_MONTH,
                                "fb_bytes": 40 * GIB}
    # the same-host vGPU move is a host graphics policy change + power-cycle, not a "VM → GPU" action
    assert [s.action for s in p.steps] == [actions.SET_GRAPHICS_POLICY, actions.SET_NUMA_AFFINITY]
    assert p.steps[0].target["power_cycle"] == ["vm-3"]


def test_an_emptied_host_saves_its_measured_power_or_baseline_plus_gpu_idle():
    a, b = _gpu(1, host="h1", power=40.0), _gpu(2, host="h2", power=45.0)
    ts = [_t("vm-1", a, "10c", 10), _t("vm-2", a, "10c", 5), _t("vm-3", b, "10c", 8)]
    caps = [HostCap("h1", 1 << 40, {0: 64}), HostCap("h2", 1 << 40, {0: 64}, power_watts=612.5)]
    p = plan([a, b], ts, caps, TABLE)
    assert p.freed_hosts == ["h2"] and p.watts_saved == 612.5
    assert abs(p.kwh_month_saved - 612.5 * 0.73) < 1e-9 and p.freed_capacity["gpus"] == 0
    assert [s.action for s in p.steps][-2:] == [actions.ENTER_MAINTENANCE, actions.POWER_OFF_HOST]
    # no host power sample: configured baseline + the host's measured GPU idle power
    caps[1] = HostCap("h2", 1 << 40, {0: 64}, baseline_watts=180.0)
    assert plan([a, b], ts, caps, TABLE).watts_saved == 225.0
    # neither: the host is emptied, its power unknown, nothing guessed
    caps[1] = HostCap("h2", 1 << 40, {0: 64})
    p = plan([a, b], ts, caps, TABLE)
    assert p.freed_hosts == ["h2"] and p.watts_saved == 0.0 and p.unmeasured_emptied_hosts == 1
    # another powered-on VM keeps the host on: emptied of GPU work only
    caps[1] = HostCap("h2", 1 << 40, {0: 64}, power_watts=612.5, other_vms=("db-1",))
    p = plan([a, b], ts, caps, TABLE)
    assert p.freed_hosts == [] and p.watts_saved == 0.0 and p.freed_capacity["gpus"] == 1
    assert "host stays on unless those VMs move too: db-1" in p.hosts_kept_on[0]["reason"]


def test_rules_block_moves_and_infeasible_gives_reason():
    a, b = _gpu(1), _gpu(2)
    # different framebuffer sizes on sameSize GPUs cannot share
    p = plan([a, b], [_t("vm-1", a, "10c", 5), _t("vm-2", b, "20c", 5)], [HostCap("h1", 1 << 40, {0: 64})], TABLE)
    assert not p.moves and "no receiving GPU" in p.reason
    # on a mixedSize host they can
    a2, b2 = _gpu(1, mode="mixedSize"), _gpu(2, mode="mixedSize")
    p = plan([a2, b2], [_t("vm-1", a2, "10c", 5), _t("vm-2", b2, "20c", 5)], [HostCap("h1", 1 << 40, {0: 64})], TABLE)
    assert len(p.moves) == 1
    # NUMA: the only receiver's node has no CPUs left
    c = _gpu(3, node=1)
    p = plan([a, c], [_t("vm-1", a, "10c", 5, num_cpu=8), _t("vm-2", c, "10c", 5, num_cpu=8)],
             [HostCap("h1", 1 << 40, {0: 8, 1: 8})], TABLE)
    assert not p.moves
    # passthrough converts to the smallest C profile holding fb high-water mark + 10 %
    pt = _t("vm-9", b, None, 3, fb_hwm_bytes=7 * GIB)
    p = plan([a, b], [_t("vm-1", a, "10c", 5), pt], [HostCap("h1", 1 << 40, {0: 64})], TABLE)
    assert p.moves and p.moves[0].converted and p.moves[0].to_profile == "10c"
    assert plan([], [], [], TABLE).reason


def test_profile_names():
    assert parse_profile_name("grid_a100-10c") == "10c"
    assert parse_profile_name("grid_a100-3-20c") == "3-20c"
    assert parse_profile_name("nvidia_h100-80c") == "80c"
    assert TABLE.model_for("NVIDIA A100-PCIE-40GB", 40 * GIB) == "a100-40"
    assert TABLE.model_for("NVIDIA A10", 24 * GIB) == "a10"
    assert TABLE.model_for("NVIDIA H100 PCIe", 80 * GIB) == "h100"


def test_generator_reaches_plans_with_moves_and_conversions():
    """The invariants above are not vacuous: the estates include plans that move and convert."""
    def moves(e):
        return plan(e[0], e[1], e[2], TABLE, target_util_percent=e[3]).moves

    cfg = settings(max_examples=2000, deadline=None, database=None, phases=[Phase.generate])
    assert moves(find(estates(), lambda e: len(moves(e)) >= 2, settings=cfg))
    assert any(m.converted for m in moves(find(estates(), lambda e: any(m.converted for m in moves(e)), settings=cfg)))


def test_generator_reaches_emptied_hosts_and_every_kind_of_step():
    """The savings and step invariants are not vacuous: estates empty hosts, migrate across hosts,
    re-place within a host and set NUMA affinity."""
    def p(e):
        return plan(e[0], e[1], e[2], TABLE, target_util_percent=e[3])

    cfg = settings(max_examples=3000, deadline=None, database=None, phases=[Phase.generate])
    e = find(estates(), lambda e: p(e).watts_saved > 0, settings=cfg)
    assert p(e).freed_hosts and p(e).emptied_hosts[0]["watts"] > 0
    for kind in (actions.VMOTION, actions.SET_NUMA_AFFINITY, actions.CHANGE_VGPU_PROFILE, actions.POWER_OFF_HOST):
        assert find(estates(), lambda e, k=kind: any(s.action == k for s in p(e).steps), settings=cfg)
    e = find(estates(), lambda e: any(s.target.get("power_cycle") for s in p(e).steps), settings=cfg)
    assert p(e).freed_capacity["gpus"] >= 1 or p(e).freed_hosts
