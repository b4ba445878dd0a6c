"""Idle cost (analytics/cost.py, docs/cost.md): the definitions, on hand-made frames and on the test estate."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

from accelmon.analytics import cost
from accelmon.analytics.analyze import analyze
from accelmon.analytics.consolidation import Plan
from accelmon.analytics.window import Window
from accelmon.config import ConfigError, parse
from accelmon.report import costhtml, jsonout
from accelmon.store.writer import Store
from tests.analytics.estate import DAYS, HOSTS, SNAP, T0, VC, write_estate

GIB = 1 << 30
PRICES = cost.Prices(currency="EUR", gpu_hour_price={"A100": 2.0, "H100": 4.0, "A100 80GB": 3.0},
                     electricity_per_kwh=0.25)


def _gpus(rows: list[dict]) -> pl.DataFrame:
    base = {"gpu": None, "vcenter_uuid": VC, "vm_moref": None, "vm_name": None, "host_name": None, "status": "ok",
            "underutilized": False, "mean_util_percent": 0.0, "backing": "passthrough", "vgpu_profile": None,
            "idle_hours": None, "idle_energy_kwh": 0.0}
    return pl.DataFrame([{**base, **r} for r in rows])


def _gmap(rows: list[dict]) -> pl.DataFrame:
    base = {"gpu": None, "vcenter_uuid": VC, "vm_moref": None, "vm_name": None, "host_moref": "host-1",
            "host_pci_id": "0000:3b:00.0", "backing": "passthrough", "vgpu_profile": None, "vgpu_fb_bytes": None,
            "model_name": None}
    return pl.DataFrame([{**base, **r} for r in rows], schema_overrides={"vgpu_fb_bytes": pl.Int64})


PHYS = pl.DataFrame([{"vcenter_uuid": VC, "host_moref": "host-1", "pci": "0000:3b:00.0",
                      "device_name": "NVIDIA A100-PCIE-40GB", "fb_bytes": 40 * GIB, "gpu_id": "esx1/0000:3b:00.0"},
                     {"vcenter_uuid": VC, "host_moref": "host-1", "pci": "0000:af:00.0",
                      "device_name": "NVIDIA H100 80GB HBM3", "fb_bytes": 80 * GIB, "gpu_id": "esx1/0000:af:00.0"}])
NO_OWNERS = pl.DataFrame(schema={"vcenter_uuid": pl.String, "vm_moref": pl.String, "owner": pl.String,
                                 "team": pl.String, "cost_center": pl.String, "email": pl.String})


def test_idle_ten_hours_at_two_per_hour_costs_twenty() -> None:
    g = _gpus([{"gpu": "GPU-a", "vm_moref": "vm-1", "idle_hours": 10.0, "idle_energy_kwh": 3.0}])
    m = _gmap([{"gpu": "GPU-a", "vm_moref": "vm-1"}])
    c = cost.compute(g, m, PHYS, NO_OWNERS, {"GPU-a"}, Plan(), PRICES)
    r = c["by_gpu"][0]
    assert r["price_per_hour"] == 2.0 and r["idle_cost"] == pytest.approx(20.0)
    assert r["idle_energy_cost"] == pytest.approx(0.75)  # 3 kWh × 0.25
    assert r["owner"] == r["team"] == cost.UNOWNED
    assert c["currency"] == "EUR" and c["total"]["idle_cost"] == pytest.approx(20.0)


def test_vgpu_with_half_the_framebuffer_costs_half() -> None:
    g = _gpus([{"gpu": "GPU-pt", "vm_moref": "vm-1", "idle_hours": 10.0},
               {"gpu": "GPU-vg", "vm_moref": "vm-2", "idle_hours": 10.0, "backing": "vgpu",
                "vgpu_profile": "grid_a100-20c"}])
    m = _gmap([{"gpu": "GPU-pt", "vm_moref": "vm-1"},
               {"gpu": "GPU-vg", "vm_moref": "vm-2", "backing": "vgpu", "vgpu_profile": "grid_a100-20c",
                "vgpu_fb_bytes": 20 * GIB}])
    c = {r["gpu"]: r for r in cost.compute(g, m, PHYS, NO_OWNERS, set(), Plan(), PRICES)["by_gpu"]}
    assert c["GPU-vg"]["fb_fraction"] == pytest.approx(0.5)
    assert c["GPU-vg"]["idle_cost"] == pytest.approx(c["GPU-pt"]["idle_cost"] / 2)
    # a per-profile price overrides the fraction
    p2 = cost.Prices(gpu_hour_price={"A100": 2.0}, vgpu_profile_price={"grid_a100-20c": 0.3})
    c2 = {r["gpu"]: r for r in cost.compute(g, m, PHYS, NO_OWNERS, set(), Plan(), p2)["by_gpu"]}
    assert c2["GPU-vg"]["idle_cost"] == pytest.approx(3.0)


def test_no_power_is_null_energy_and_unpriced_is_null_cost() -> None:
    g = _gpus([{"gpu": "GPU-a", "vm_moref": "vm-1", "idle_hours": 5.0, "idle_energy_kwh": 0.0}])
    m = _gmap([{"gpu": "GPU-a", "vm_moref": "vm-1", "host_pci_id": "0000:00:00.0", "model_name": "Tesla T4"}])
    c = cost.compute(g, m, PHYS, NO_OWNERS, set(), Plan(), cost.Prices(gpu_hour_price={"A100": 2.0},
                                                                        electricity_per_kwh=0.3))
    r = c["by_gpu"][0]
    assert r["idle_energy_kwh"] is None and r["idle_energy_cost"] is None  # never 0 for "not reported"
    assert r["idle_cost"] is None and r["price_basis"].startswith("unpriced")  # T4 is not an A100
    assert c["total"]["unpriced_gpus"] == 1 and c["total"]["idle_cost"] is None and c["total"]["no_power_gpus"] == 1


def test_model_price_most_specific_key_and_default() -> None:
    assert cost.model_price("NVIDIA A100 80GB PCIe", PRICES.gpu_hour_price) == (3.0, "A100 80GB")
    assert cost.model_price("NVIDIA A100-PCIE-40GB", PRICES.gpu_hour_price) == (2.0, "A100")
    assert cost.model_price("NVIDIA A10", PRICES.gpu_hour_price) == (None, None)  # "A10" is not "A100"
    assert cost.model_price("NVIDIA A10", {"default": 1.5, "A100": 2.0}) == (1.5, "default")


def test_rollup_by_owner_and_team_adds_up_with_unowned_group() -> None:
    g = _gpus([{"gpu": f"GPU-{i}", "vm_moref": f"vm-{i}", "idle_hours": float(i + 1)} for i in range(4)])
    m = _gmap([{"gpu": f"GPU-{i}", "vm_moref": f"vm-{i}"} for i in range(4)])
    owners = pl.DataFrame([{"vcenter_uuid": VC, "vm_moref": "vm-0", "owner": "ann", "team": "ml", "cost_center": None,
                            "email": "ann@example.com"},
                           {"vcenter_uuid": VC, "vm_moref": "vm-1", "owner": "bob", "team": "ml", "cost_center": None,
                            "email": "bob@example.com"}])
    c = cost.compute(g, m, PHYS, owners, set(), Plan(), PRICES)
    teams = {r["team"]: r for r in c["by_team"]}
    assert teams["ml"]["idle_cost"] == pytest.approx((1 + 2) * 2.0)
    assert teams[cost.UNOWNED]["idle_cost"] == pytest.approx((3 + 4) * 2.0) and teams[cost.UNOWNED]["gpus"] == 2
    for key in ("by_team", "by_owner", "by_vm"):
        assert sum(r["idle_cost"] for r in c[key]) == pytest.approx(c["total"]["idle_cost"])


def test_plan_money_keeps_capacity_apart_from_energy() -> None:
    p = Plan(kwh_month_saved=730.0, freed_capacity={"gpus": 1, "gpu_ids": ["esx1/0000:af:00.0"],
                                                    "gpu_hours_month": 730.0, "fb_bytes": 80 * GIB})
    pm = cost.plan_money(p, PHYS, PRICES)
    assert pm["energy_saved_month"] == pytest.approx(730.0 * 0.25)
    assert pm["capacity_freed"]["value_month"] == pytest.approx(730.0 * 4.0)  # the H100's price
    assert cost.plan_money(p, PHYS, cost.Prices())["energy_saved_month"] is None


def test_cost_config_one_line_errors() -> None:
    with pytest.raises(ConfigError) as e:
        parse({"cost": {"currency": "euro", "gpu_hour_price": {"A100": -1}}}, "t.toml", env={})
    lines = e.value.lines
    assert any(ln.startswith("t.toml: cost.currency:") for ln in lines)
    assert any("cost.gpu_hour_price" in ln and "A100" in ln for ln in lines)
    cfg = parse({"cost": {"gpu_hour_price": {"A100": 2, "default": 1}, "electricity_per_kwh": 0.2}}, "t", env={})
    assert cfg.cost.currency == "USD" and cfg.cost.gpu_hour_price["A100"] == 2.0


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Store:
    st = Store(Path(tmp_path_factory.mktemp("cost")))
    write_estate(st)
    return st


def test_estate_analysis_cost_definitions(estate: Store) -> None:
    """Owner rows written through the store join via the VM identity; the newest row at the window end wins."""
    estate.append("vm_owner", [
        {"snapshot_ts": SNAP - dt.timedelta(days=5), "vcenter_uuid": VC, "vm_moref": "vm-101", "owner": "old",
         "team": "old-team", "email": "old@example.com"},
        {"snapshot_ts": SNAP - dt.timedelta(days=4), "vcenter_uuid": VC, "vm_moref": "vm-101", "owner": "ann",
         "team": "ml", "email": "ann@example.com"},
        {"snapshot_ts": SNAP - dt.timedelta(days=4), "vcenter_uuid": VC, "vm_moref": "vm-201", "owner": "bob",
         "team": "infer", "email": "bob@example.com"}])
    cfg = parse({"cost": {"currency": "EUR", "gpu_hour_price": {"A100": 2.0}, "electricity_per_kwh": 0.25}}, "t",
                env={})
    a = analyze(estate, cfg.thresholds, Window(T0, T0 + dt.timedelta(days=DAYS)), prices=cfg.cost)
    by = {r["gpu"]: r for r in a.cost["by_gpu"]}
    g = {r["gpu"]: r for r in a.gpus.to_dicts()}
    assert len(by) == a.gpus.height and HOSTS
    for u, r in by.items():
        assert r["idle_gpu_hours"] == g[u]["idle_hours"]  # the analysis' idle hours, no new definition
        if r["backing"] == "vgpu":  # grid_a100-10c on a 40 GB A100: a quarter of its price, no power reported
            assert r["fb_fraction"] == pytest.approx(0.25) and r["price_per_hour"] == pytest.approx(0.5)
            assert r["idle_energy_kwh"] is None
        else:
            assert r["price_per_hour"] == 2.0 and r["idle_energy_kwh"] == pytest.approx(g[u]["idle_energy_kwh"])
            assert r["idle_energy_cost"] == pytest.approx(0.25 * g[u]["idle_energy_kwh"])
        if r["idle_gpu_hours"] is not None:
            assert r["idle_cost"] == pytest.approx(r["idle_gpu_hours"] * r["price_per_hour"])
    owners = {r["vm_moref"]: r["owner"] for r in a.cost["by_gpu"]}
    assert owners["vm-101"] == "ann" and owners["vm-201"] == "bob" and owners["vm-301"] == cost.UNOWNED
    assert {r["team"] for r in a.cost["by_team"]} >= {"ml", "infer", cost.UNOWNED}
    assert a.cost["plan"]["energy_saved_month"] == pytest.approx(a.plan.kwh_month_saved * 0.25)


def test_docs_worked_example() -> None:
    """docs/cost.md, "Worked example": the same numbers through cost.compute."""
    g = _gpus([{"gpu": "GPU-1", "vm_moref": "vm-1", "underutilized": True, "idle_hours": 168 - 5.04,
                "idle_energy_kwh": 6.6},
               {"gpu": "GPU-2", "vm_moref": "vm-2", "underutilized": True, "idle_hours": 150.0, "backing": "vgpu",
                "vgpu_profile": "grid_a100-10c", "idle_energy_kwh": 0.0},
               {"gpu": "GPU-3", "vm_moref": "vm-3", "idle_hours": 50.0, "idle_energy_kwh": 0.5}])
    m = _gmap([{"gpu": "GPU-1", "vm_moref": "vm-1"},
               {"gpu": "GPU-2", "vm_moref": "vm-2", "backing": "vgpu", "vgpu_profile": "grid_a100-10c"},
               {"gpu": "GPU-3", "vm_moref": "vm-3"}])
    owners = pl.DataFrame([{"vcenter_uuid": VC, "vm_moref": f"vm-{i}", "owner": o, "team": "ml", "cost_center": None,
                            "email": f"{o}@example.com"} for i, o in ((1, "ann"), (2, "bob"))])
    plan = Plan(kwh_month_saved=450 * 730 / 1000, freed_capacity={
        "gpus": 2, "gpu_ids": ["esx1/0000:3b:00.0", "esx1/0000:3b:00.0"], "gpu_hours_month": 1460.0})
    c = cost.compute(g, m, PHYS, owners, {"GPU-1", "GPU-3"}, plan,
                     cost.Prices(gpu_hour_price={"A100": 2.5}, electricity_per_kwh=0.15))
    by = {r["gpu"]: r for r in c["by_gpu"]}
    assert by["GPU-1"]["idle_cost"] == pytest.approx(407.40) and by["GPU-1"]["idle_energy_cost"] == pytest.approx(0.99)
    assert by["GPU-2"]["price_per_hour"] == pytest.approx(0.625) and by["GPU-2"]["idle_cost"] == pytest.approx(93.75)
    assert by["GPU-2"]["idle_energy_kwh"] is None
    teams = {r["team"]: r for r in c["by_team"]}
    assert teams["ml"]["idle_cost"] == pytest.approx(501.15) and teams["ml"]["idle_gpu_hours"] == pytest.approx(312.96)
    assert teams["ml"]["no_power_gpus"] == 1 and teams[cost.UNOWNED]["idle_cost"] == pytest.approx(125.0)
    assert c["plan"]["energy_saved_month"] == pytest.approx(49.275)
    assert c["plan"]["capacity_freed"]["value_month"] == pytest.approx(3650.0)


def test_report_json_and_html_cost_section(estate: Store) -> None:
    cfg = parse({"cost": {"gpu_hour_price": {"default": 1.0}}}, "t", env={})
    a = analyze(estate, cfg.thresholds, Window(T0, T0 + dt.timedelta(days=DAYS)), prices=cfg.cost)
    doc = jsonout.build(a)
    assert {"currency", "by_gpu", "by_vm", "by_owner", "by_team", "plan"} <= set(doc["cost"])
    json.dumps(doc["cost"])  # serialisable as is
    page = costhtml.section(doc["cost"])
    assert "Idle cost by owner / team" in page and cost.UNOWNED in page and "<script" not in page
    assert costhtml.section({}) == ""
