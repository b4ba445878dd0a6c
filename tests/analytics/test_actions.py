"""PowerShell quoting of inventory names in plan steps: a name can never end its literal or its line."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from accelmon.analytics import actions

_Q = "'\u2018\u2019\u201a\u201b"  # PowerShell's single quotes (about_Quoting_Rules)


def _unquote(lit: str) -> str:
    """PowerShell's reading of a single-quoted literal (raises if it ends early)."""
    assert lit[0] in _Q and lit[-1] in _Q
    body, out, i = lit[1:-1], [], 0
    while i < len(body):
        if body[i] in _Q:
            assert i + 1 < len(body) and body[i + 1] in _Q, f"literal ends early at {i}: {lit!r}"
            i += 1
        out.append(body[i])
        i += 1
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_a_name_survives_quoting_and_matches_only_itself(name: str) -> None:
    lit = actions.ps_literal(name)
    assert "\n" not in lit and "\r" not in lit
    val = _unquote(lit)
    assert val == "".join("?" if ord(c) < 32 or c in "\x7f\x85\u2028\u2029" else c for c in name)
    pat = _unquote(actions.ps_name(name))
    assert re.sub(r"`([*?\[\]`])", r"\1", pat) == val  # wildcards and the backtick escaped with a backtick
    assert not re.search(r"(?<!`)[*\[\]]", re.sub("``", "", pat))
    line = actions.vmotion("vc/vm-1", name, "esx 'a'", live=True, vgpu=True)["powercli"]
    assert line.startswith("Move-VM -VM (Get-VM -Name ") and "\n" not in line
    c = actions.comment(name)
    assert "\n" not in c and "\r" not in c and "#>" not in c


def test_every_action_of_the_vocabulary_has_api_and_cmdlet() -> None:
    built = [
        actions.vmotion("v", "vm", "h", live=False, vgpu=True),
        actions.set_graphics_policy("h", "consolidation", None, ["vm"]),
        actions.change_vgpu_profile("v", "vm", 13000, None, "grid_a100-10c"),
        actions.change_vgpu_profile("v", "vm", 13000, "grid_a100-10c", "grid_a100-20c"),
        actions.reassign_passthrough("v", "vm", 13000, "0000:86:00.0"),
        actions.set_numa_affinity("v", "vm", 1, "0"),
        actions.enter_maintenance("h"),
        actions.power_off_host("h"),
    ]
    assert {b["action"] for b in built} == set(actions.VOCABULARY)
    for b in built:
        api, cmd = actions.VOCABULARY[b["action"]]
        assert b["api"].startswith(api) and b["powercli"].startswith(cmd) and b["preconditions"]
    edit = built[3]["powercli"]
    assert "$d.Backing.Vgpu = 'grid_a100-20c'" in edit and "Operation = 'edit'" in edit
    assert "Operation = 'remove'" in built[2]["powercli"] and "VmiopBackingInfo" in built[2]["powercli"]
