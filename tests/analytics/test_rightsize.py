"""Right-sizing: smallest vGPU profile of the same series, or smallest valid MIG instance, that holds
the framebuffer peak × headroom (and, for MIG, the p95 SM activity). Expectations are derived from
the profile tables and the rule, not copied from the code's output."""

from __future__ import annotations

import polars as pl

from accelmon.analytics import actions, mig, rightsize
from accelmon.analytics.consolidation import Move, PGpu, Plan, Tenant
from accelmon.analytics.profiles import GIB, load

TABLE = load()


def _frames(gpu: str, peak: int, median: int, p95_sm: float | None = None):
    hwm = pl.DataFrame({"gpu": [gpu], "fb_hwm_bytes": [peak]})
    med = pl.DataFrame({"gpu": [gpu], "fb_hwm_bytes": [median]})
    act = pl.DataFrame({"gpu": [gpu], "p95_sm_active_percent": [p95_sm]},
                       schema={"gpu": pl.String, "p95_sm_active_percent": pl.Float64})
    return hwm, med, act


def _vgpu(model: str = "a100-80", prof: str = "16c") -> tuple[PGpu, Tenant]:
    g = PGpu("h1/0000:3b:00.0", "h1", 0, model, 80 * GIB)
    t = Tenant(vm="vc/vm-1", vm_name="infer-1", device_key=13000, gpu_id=g.gpu_id, kind="vgpu", profile=prof,
               p95_util_percent=40.0, underutilized=False, measured_gpu="GPU-v1",
               vgpu_profile_full=f"grid_a100d-{prof}")
    return g, t


def test_vgpu_16g_peaking_at_3g_gets_the_smallest_profile_of_its_series_holding_3_6g() -> None:
    g, t = _vgpu()
    s = rightsize.suggest([t], [g], TABLE, *_frames("GPU-v1", 3 * GIB, 1 * GIB))
    assert len(s) == 1
    need = 3 * GIB * 1.2
    same = [p for p in TABLE.for_model("a100-80") if p.series == "C" and p.mode == "time_sliced"]
    want = min((p for p in same if p.fb_bytes >= need), key=lambda p: p.fb_bytes)
    assert (s[0].from_profile, s[0].to_profile, s[0].direction) == ("16c", want.name, "down")
    assert TABLE.get("a100-80", s[0].to_profile).fb_bytes >= need
    assert s[0].fb_hwm_bytes == 3 * GIB and s[0].summary()["from"] == "16c"
    # into the plan: one change-vgpu-profile step with the vSphere type names, numbered after the others
    plan = Plan(window={"start": "a", "end": "b"})
    plan.steps.append(actions.Step(n=1, action="vmotion", subject="x", subject_name="x", words="", preconditions=[],
                                   api="", powercli=""))
    rightsize.add_to_plan(plan, s, [t], [g])
    st = plan.steps[-1]
    assert st.n == 2 and st.action == actions.CHANGE_VGPU_PROFILE
    assert st.target["from_profile"] == "grid_a100d-16c" and st.target["to_profile"] == f"grid_a100d-{want.name}"
    assert st.api.startswith(actions.VOCABULARY[actions.CHANGE_VGPU_PROFILE][0])
    assert st.evidence["fb_hwm_bytes"] == 3 * GIB and plan.rightsize[0]["step"] == 2


def test_tight_profile_is_sized_up_and_a_fitting_one_is_left_alone() -> None:
    g, t = _vgpu(prof="4c")
    # peak 3.9 GiB on 4 GiB: above 90 % -> the smallest C profile keeping the peak ≤ 90 % and median ≤ 70 %
    s = rightsize.suggest([t], [g], TABLE, *_frames("GPU-v1", int(3.9 * GIB), 2 * GIB))
    assert s and s[0].direction == "up"
    to = TABLE.get("a100-80", s[0].to_profile)
    assert to.fb_bytes * 0.9 >= 3.9 * GIB and to.fb_bytes >= 3.9 * GIB * 1.2
    # 8c with a 5 GiB peak: 6 GiB needed, nothing smaller than 8c of the series holds it -> no suggestion
    g, t = _vgpu(prof="8c")
    assert rightsize.suggest([t], [g], TABLE, *_frames("GPU-v1", 5 * GIB, 2 * GIB)) == []


def test_a_vm_the_plan_moves_gets_no_step() -> None:
    g, t = _vgpu()
    s = rightsize.suggest([t], [g], TABLE, *_frames("GPU-v1", 3 * GIB, 1 * GIB))
    plan = Plan()
    plan.moves.append(Move(t.vm, t.vm_name, t.device_key, g.gpu_id, "h2/x", "h1", "h2", 0, "16c", "16c", False, "",
                           {}))
    rightsize.add_to_plan(plan, s, [t], [g])
    assert plan.steps == [] and plan.rightsize[0]["step"] is None


def test_passthrough_a100_40_peaking_at_8g_with_low_sm_gets_a_valid_mig_profile() -> None:
    g = PGpu("h1/0000:af:00.0", "h1", 1, "a100-40", 40 * GIB)
    t = Tenant(vm="vc/vm-2", vm_name="notebook", device_key=13001, gpu_id=g.gpu_id, kind="passthrough",
               profile=None, p95_util_percent=90.0, underutilized=False, measured_gpu="GPU-p1")
    s = rightsize.suggest([t], [g], TABLE, *_frames("GPU-p1", 8 * GIB, 2 * GIB, p95_sm=6.0))
    assert len(s) == 1 and s[0].kind == "mig"
    name = s[0].to_profile
    p = mig.load()["a100-40"][name]
    mem = rightsize.mig_memory_bytes(name)
    assert mem is not None and mem >= 8 * GIB * 1.2
    assert mig.check("a100-40", [name])[0]
    assert 100 * p.compute_slices / 7 >= 6.0 and p.compute_slices < 7
    # smallest: no valid profile with less memory holds the need
    for q in mig.load()["a100-40"].values():
        m = rightsize.mig_memory_bytes(q.name)
        if m is not None and m < mem and "+me" not in q.name:
            assert m < 8 * GIB * 1.2
    assert "nvidia-smi mig -cgi" in s[0].words
    # not a plan step (MIG is not a vSphere action): a recommendation
    plan = Plan()
    rightsize.add_to_plan(plan, s, [t], [g])
    assert plan.steps == [] and plan.rightsize[0]["kind"] == "mig" and plan.rightsize[0]["step"] is None
    # SM activity that needs more slices than the memory does picks a bigger instance
    s2 = rightsize.suggest([t], [g], TABLE, *_frames("GPU-p1", 8 * GIB, 2 * GIB, p95_sm=50.0))
    assert s2 and 100 * mig.load()["a100-40"][s2[0].to_profile].compute_slices / 7 >= 50.0
    # without SM activity nothing is suggested (the compute side cannot be sized)
    assert rightsize.suggest([t], [g], TABLE, *_frames("GPU-p1", 8 * GIB, 2 * GIB, p95_sm=None)) == []
