"""The report in real headless Chromium: no console errors, charts rendered, a screenshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from accelmon.config import parse
from accelmon.report.cli import run_report
from accelmon.store.writer import Store
from tests.analytics.estate import write_estate
from tests.report.chromium import CHARTS_JS, Chromium

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "report.png"


@pytest.fixture(scope="module")
def browser():
    b = Chromium()
    try:
        yield b
    finally:
        b.close()


def test_report_renders_without_console_errors(browser: Chromium, tmp_path: Path) -> None:
    st = Store(tmp_path / "data")
    write_estate(st)
    run_report(st, parse({}, "<test>", env={}), since="all", out_dir=tmp_path / "r", progress=False)
    res = browser.load(tmp_path / "r" / "report.html", CHARTS_JS)
    assert res.errors == []
    v = res.value
    assert len(v["imgs"]) >= 4, v
    for i in v["imgs"]:
        assert i["complete"] and i["svg"] and i["w"] > 100 and i["h"] > 50 and i["shown"] > 100, i
    assert v["external"] == []  # self-contained
    assert any("NUMA" in h for h in v["h2"]) and any("Consolidation" in h for h in v["h2"])
    assert res.screenshot and res.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(res.screenshot) > 50_000
    (tmp_path / "report.png").write_bytes(res.screenshot)
    if os.environ.get("UPDATE_REPORT_SCREENSHOT"):  # refresh docs/img/report.png (tracked) on demand
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "report.png", SCREENSHOT)


def test_console_errors_and_broken_images_are_caught(browser: Chromium, tmp_path: Path) -> None:
    """Negative control: the checks above would fail on a broken page."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><img alt='x' src='missing.svg'>"
                    "<script>console.error('boom'); nosuchfn();</script></body></html>")
    res = browser.load(page, CHARTS_JS, screenshot=False)
    text = " | ".join(res.errors)
    assert "boom" in text and "nosuchfn" in text and "missing.svg" in text
    assert res.value["imgs"][0]["w"] == 0
