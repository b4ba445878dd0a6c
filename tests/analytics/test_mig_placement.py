"""MIG GPU-instance combinations from NVIDIA's placement table (MIG User Guide), not slice sums."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accelmon.analytics import mig
from accelmon.analytics.consolidation import MIG_SLICES, PGpu, profile_allowed
from accelmon.analytics.profiles import GIB, load

TABLE = load()
MODELS = sorted(mig.load())


@pytest.mark.parametrize("model,profiles,ok", [
    # MIG User Guide, "Partitioning" (R510+): a (4 memory, 4 compute) and a (4 memory, 3 compute) profile coexist
    ("a100-40", ["4g.20gb", "3g.20gb"], True),
    ("a100-40", ["4g.20gb", "4g.20gb"], False),  # 4g.20gb starts only at 0 (-lgipp {0}:4)
    ("a100-40", ["3g.20gb", "3g.20gb"], True),  # {0,4}:4: "two instances of type 3g.20gb"
    ("a100-40", ["1g.5gb"] * 7, True),  # "or seven instances of 1g.5gb"
    ("a100-40", ["1g.5gb"] * 8, False),
    ("a100-40", ["2g.10gb"] * 3 + ["1g.5gb"], True),
    ("a100-40", ["2g.10gb"] * 3 + ["1g.10gb"], True),  # 1g.10gb at 6 (slots 6-7)
    ("a100-40", ["3g.20gb", "3g.20gb", "1g.5gb"], False),  # slices 3+3+1 = 7 but all 8 memory slots are taken
    ("a100-40", ["7g.40gb"], True),
    ("a100-40", ["7g.40gb", "1g.5gb"], False),
    ("a100-40", ["1g.5gb+me", "1g.5gb+me"], False),  # "A single 1g profile can include media extensions"
    ("a100-40", ["1g.10gb"] * 4, True),
    ("a100-40", ["1g.10gb"] * 4 + ["1g.5gb"], False),
    ("h100", ["4g.40gb", "3g.40gb"], True),
    ("h100", ["4g.40gb", "4g.40gb"], False),
    ("h100", ["1g.10gb"] * 7, True),
    ("h100", ["1g.20gb"] * 4, True),
    ("h100", ["1g.20gb"] * 5, False),  # Table 7: 4 instances of 1g.20gb
    ("h100", ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"], True),
    ("a100-80", ["3g.40gb", "3g.40gb", "1g.10gb"], False),
])
def test_guide_examples(model: str, profiles: list[str], ok: bool) -> None:
    assert mig.valid_mig_combination(model, profiles) is ok
    assert mig.can_add(model, profiles[:-1], profiles[-1]) is ok


def test_unknown_model_or_profile_is_false_with_a_reason() -> None:
    assert mig.check("a30", ["1g.6gb"]) == (False, "no MIG placement data for GPU model 'a30'")
    assert mig.check(None, []) [0] is False
    ok, why = mig.check("a100-40", ["5g.25gb"])
    assert not ok and "5g.25gb" in why


def test_every_mig_backed_vgpu_profile_maps_onto_a_mig_profile_of_its_model() -> None:
    rows = [p for p in TABLE.profiles if p.mode == "mig"]
    assert rows
    for p in rows:
        name = mig.vgpu_to_mig(p.name)
        assert name is not None and name in mig.load()[p.model], (p.model, p.name)
        mp = mig.load()[p.model][name]
        assert mp.compute_slices == p.mig_slices
        # the vGPU type's per-GPU maximum is what the placements allow for that profile alone
        assert mig.valid_mig_combination(p.model, [name] * p.max_per_gpu)
        assert not mig.valid_mig_combination(p.model, [name] * (p.max_per_gpu + 1))


def test_table_is_consistent() -> None:
    for model, profs in mig.load().items():
        for p in profs.values():
            assert p.starts and all(s + p.memory_slices <= mig.MEMORY_SLOTS for s in p.starts), (model, p.name)
            assert 1 <= p.compute_slices <= mig.COMPUTE_SLICES and p.compute_slices <= p.memory_slices
            assert p.name.startswith(f"{p.compute_slices}g.")


@st.composite
def combos(draw):
    model = draw(st.sampled_from(MODELS))
    names = sorted(mig.load()[model])
    return model, draw(st.lists(st.sampled_from(names), max_size=9))


@settings(max_examples=400, deadline=None)
@given(combos())
def test_accepted_combinations_have_a_non_overlapping_placement(c) -> None:
    model, profiles = c
    table = mig.load()[model]
    got = mig.placement(model, profiles)
    assert mig.valid_mig_combination(model, profiles) is (got is not None)
    if got is None:
        return
    assert sorted(n for n, _ in got) == sorted(profiles)
    used: set[int] = set()
    for name, start in got:
        p = table[name]
        assert start in p.starts
        slots = set(range(start, start + p.memory_slices))
        assert not used & slots and max(slots) < mig.MEMORY_SLOTS
        used |= slots
    assert sum(table[n].compute_slices for n in profiles) <= mig.COMPUTE_SLICES
    assert sum(table[n].memory_slices for n in profiles) <= mig.MEMORY_SLOTS
    for n in set(profiles):
        assert profiles.count(n) <= table[n].max_instances


def test_profile_allowed_uses_placements() -> None:
    """3g.20gb + 3g.20gb + 1g.5gb: 3 + 3 + 1 = 7 compute slices, so a slice sum accepts it, but the two
    3g instances take all 8 memory slots. 4g.20gb + 3g.20gb sit at 0 and 4."""
    assert MIG_SLICES >= 3 + 3 + 1 and not mig.valid_mig_combination("a100-40", ["3g.20gb", "3g.20gb", "1g.5gb"])
    gpu = PGpu("h/0000:3b:00.0", "h", 0, "a100-40", 40 * GIB)
    g = TABLE.get
    assert profile_allowed(gpu, [g("a100-40", "4-20c")], g("a100-40", "3-20c"))
    assert not profile_allowed(gpu, [g("a100-40", "3-20c"), g("a100-40", "3-20c")], g("a100-40", "1-5c"))
    assert not profile_allowed(gpu, [g("a100-40", "4-20c")], g("a100-40", "4-20c"))
    assert not profile_allowed(PGpu("h/x", "h", 0, "a30", 24 * GIB), [], g("a100-40", "1-5c"))  # other model


@pytest.mark.parametrize("model", ["a100-40", "a100-80", "h100"])
def test_planner_accepts_exactly_the_placeable_mig_sets(model: str) -> None:
    """Every multiset of the model's MIG-backed vGPU types, built up one at a time as the planner does:
    accepted iff NVIDIA's placements hold it."""
    import itertools

    ps = [p for p in TABLE.for_model(model) if p.mode == "mig"]
    fb = next(m.fb_total_bytes for m in TABLE.models if m.key == model)
    gpu = PGpu("h/0000:3b:00.0", "h", 0, model, fb)
    for n in range(1, 8):
        for combo in itertools.combinations_with_replacement(ps, n):
            ok = all(profile_allowed(gpu, list(combo[:k]), combo[k]) for k in range(n))
            names = [mig.vgpu_to_mig(p.name) or "" for p in combo]
            assert ok is mig.valid_mig_combination(model, names), [p.name for p in combo]
