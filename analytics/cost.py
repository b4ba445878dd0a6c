"""What idle GPUs cost, per GPU, VM, owner and team, and what the plan saves in money (docs/cost.md).

Definitions (no new idle definition: docs/analytics.md, "Per GPU"):

* **idle GPU-hours** = the analysis' ``idle_hours`` = Σ (covered − busy), busy = dt·v/100
  (ARCHITECTURE.md, "Utilization": "A sample with value v over a period dt contributes
  busy = dt·v/100 and idle = dt − busy").
* **price per hour** of a GPU: ``[cost] vgpu_profile_price`` for its vGPU profile if listed; else
  ``gpu_hour_price`` of its physical GPU model (the most specific key whose words are all words of
  the model name; ``default`` if none matches) × the framebuffer fraction for a vGPU
  (profile framebuffer ÷ physical framebuffer); a passthrough GPU is a whole GPU (fraction 1).
  No price (no match, no default, vGPU fraction unknown) → NULL cost, never 0.
* **idle cost** = idle GPU-hours × price per hour.
* **idle energy** = the analysis' ``idle_energy_kwh`` (energy of the fully idle intervals, from
  the energy counter, else board power × time); NULL where the GPU's samples carry neither
  ``energy_millijoules_total`` nor ``power_milliwatts`` in the window (a vGPU guest, a trace
  without power): not reported is not 0 kWh. **idle energy cost** = kWh × ``electricity_per_kwh``.
* **owner / team** of a GPU: the ``vm_owner`` row of its VM (joined through the VM identity the
  analysis already has: ``vcenter_uuid`` + ``vm_moref`` of :func:`accelmon.analytics.identity.gpu_vm_map`)
  valid at the window end (the latest with ``snapshot_ts`` <= window end). No VM, no row, or a
  NULL owner / team → the group ``unowned``.
* **plan in money** (ARCHITECTURE.md, "Savings = power of hosts the plan empties. GPUs freed in
  hosts that stay on are capacity, not watts"): ``energy_saved_month`` = the plan's kWh/month of
  emptied hosts × price per kWh; ``capacity_freed_month`` = Σ over the freed-capacity GPUs of
  730 h × their GPU-hour price, reported apart, never added to the energy saved.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from accelmon.analytics.db import frame
from accelmon.analytics.profiles import GIB, ProfileTable, parse_profile_name
from accelmon.analytics.savings import HOURS_PER_MONTH

UNOWNED = "unowned"
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Prices:
    """The ``[cost]`` section as the analysis needs it (accelmon.config_cost.CostConfig)."""

    currency: str = "USD"
    gpu_hour_price: dict[str, float] = field(default_factory=dict)
    vgpu_profile_price: dict[str, float] = field(default_factory=dict)
    electricity_per_kwh: float | None = None

    @classmethod
    def of(cls, cfg: Any) -> Prices:
        if cfg is None:
            return cls()
        return cls(currency=cfg.currency, gpu_hour_price=dict(cfg.gpu_hour_price),
                   vgpu_profile_price={k.lower(): v for k, v in cfg.vgpu_profile_price.items()},
                   electricity_per_kwh=cfg.electricity_per_kwh)


def _words(s: str) -> set[str]:
    return set(_WORD.findall(s.lower()))


def model_price(model_name: str | None, table: dict[str, float]) -> tuple[float | None, str | None]:
    """(price per GPU-hour, matching key) of a physical GPU model name; the ``default`` key where none matches."""
    if model_name:
        words = _words(model_name)
        hits = [k for k in table if k != "default" and _words(k) and _words(k) <= words]
        if hits:
            best = max(hits, key=lambda k: (len(_words(k)), len(k), k))
            return table[best], best
    if "default" in table:
        return table["default"], "default"
    return None, None


def _vgpu_fb_bytes(fb: int | None, profile: str | None) -> int | None:
    if fb:
        return int(fb)
    name = parse_profile_name(profile)
    m = re.search(r"(\d+)[a-z]$", name or "")
    return int(m.group(1)) * GIB if m else None


def gpu_price(r: dict[str, Any], prices: Prices, table: ProfileTable | None = None
              ) -> tuple[float | None, float | None, str]:
    """(price per hour, framebuffer fraction, basis in words) of one GPU row (see the module doc)."""
    model = r.get("physical_model") or r.get("model_name")
    vgpu = r.get("backing") == "vgpu" or bool(r.get("vgpu_profile"))
    if vgpu:
        prof = (r.get("vgpu_profile") or "").lower()
        if prof and prof in prices.vgpu_profile_price:
            return prices.vgpu_profile_price[prof], None, f"vgpu_profile_price {prof}"
        base, key = model_price(r.get("physical_model"), prices.gpu_hour_price)
        fb = _vgpu_fb_bytes(r.get("vgpu_fb_bytes"), r.get("vgpu_profile"))
        total = r.get("physical_fb_bytes")
        if not total and table is not None and r.get("physical_model"):
            key_m = table.model_for(r["physical_model"], None)
            total = next((m.fb_total_bytes for m in table.models if m.key == key_m), None)
        if base is None:
            return None, None, "unpriced: no gpu_hour_price for the physical GPU and no default"
        if not fb or not total:
            return None, None, "unpriced: framebuffer fraction unknown (profile or physical framebuffer)"
        frac = min(1.0, fb / total)
        return base * frac, frac, f"{frac:.3g} × gpu_hour_price {key}"
    price, key = model_price(model, prices.gpu_hour_price)
    if price is None:
        return None, 1.0, "unpriced: no gpu_hour_price matches the model and no default"
    return price, 1.0, f"gpu_hour_price {key}"


def _mul(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a * b


def _sum(vals: list[float | None]) -> float | None:
    known = [v for v in vals if v is not None]
    return float(sum(known)) if known else None


def per_gpu(gpus: pl.DataFrame, gmap: pl.DataFrame, physical: pl.DataFrame, owners: pl.DataFrame,
            powered: set[str], prices: Prices, table: ProfileTable | None = None) -> list[dict[str, Any]]:
    """One row per analysed GPU: idle GPU-hours, price, idle cost, idle energy and its cost, owner/team."""
    info = {r["gpu"]: r for r in gmap.to_dicts()} if gmap.height else {}
    phys = {(r["vcenter_uuid"], r["host_moref"], r["pci"]): r for r in physical.to_dicts()} if physical.height else {}
    own = {(r["vcenter_uuid"], r["vm_moref"]): r for r in owners.to_dicts()} if owners.height else {}
    out = []
    for g in gpus.to_dicts():
        m = info.get(g["gpu"], {})
        vc, vm = g.get("vcenter_uuid") or m.get("vcenter_uuid"), g.get("vm_moref") or m.get("vm_moref")
        p = phys.get((vc, m.get("host_moref"), (m.get("host_pci_id") or "").lower()), {})
        row = {**m, "backing": g.get("backing") or m.get("backing"),
               "vgpu_profile": g.get("vgpu_profile") or m.get("vgpu_profile"),
               "physical_model": p.get("device_name"), "physical_fb_bytes": p.get("fb_bytes")}
        price, frac, basis = gpu_price(row, prices, table)
        o = own.get((vc, vm), {})
        idle_h = g.get("idle_hours")
        kwh = g.get("idle_energy_kwh") if g["gpu"] in powered else None
        out.append({
            "gpu": g["gpu"], "vcenter_uuid": vc, "vm_moref": vm, "vm_name": g.get("vm_name") or m.get("vm_name"),
            "host_name": g.get("host_name"), "status": g.get("status"), "underutilized": g.get("underutilized"),
            "mean_util_percent": g.get("mean_util_percent"), "backing": row["backing"],
            "vgpu_profile": row["vgpu_profile"], "model": row["physical_model"] or m.get("model_name"),
            "fb_fraction": frac, "price_per_hour": price, "price_basis": basis,
            "idle_gpu_hours": idle_h, "idle_cost": _mul(idle_h, price),
            "idle_energy_kwh": kwh, "idle_energy_cost": _mul(kwh, prices.electricity_per_kwh),
            "owner": o.get("owner") or UNOWNED, "team": o.get("team") or UNOWNED, "email": o.get("email"),
            "cost_center": o.get("cost_center"),
        })
    return out


def rollup(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Sum per group: known values only (NULL when none is known), with counts of what could not be priced."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for k, rs in groups.items():
        out.append({
            **dict(zip(keys, k, strict=True)), "gpus": len(rs),
            "flagged_gpus": sum(1 for r in rs if r.get("underutilized") is True),
            "idle_gpu_hours": _sum([r["idle_gpu_hours"] for r in rs]),
            "idle_cost": _sum([r["idle_cost"] for r in rs]),
            "idle_energy_kwh": _sum([r["idle_energy_kwh"] for r in rs]),
            "idle_energy_cost": _sum([r["idle_energy_cost"] for r in rs]),
            "unpriced_gpus": sum(1 for r in rs if r["idle_gpu_hours"] is not None and r["idle_cost"] is None),
            "no_power_gpus": sum(1 for r in rs if r["idle_energy_kwh"] is None),
        })
    return sorted(out, key=lambda r: (-(r["idle_cost"] or 0.0), -(r["idle_gpu_hours"] or 0.0),
                                      tuple(str(r.get(k)) for k in keys)))


def plan_money(plan: Any, physical: pl.DataFrame, prices: Prices) -> dict[str, Any]:
    """The plan's monthly saving in money: energy of emptied hosts, and freed capacity apart (module doc)."""
    kwh = float(plan.kwh_month_saved)
    by_id = {r["gpu_id"]: r for r in physical.to_dicts()} if physical.height else {}
    ids = list(plan.freed_capacity.get("gpu_ids", []))
    priced = [model_price((by_id.get(g) or {}).get("device_name"), prices.gpu_hour_price)[0] for g in ids]
    known = [p for p in priced if p is not None]
    return {
        "kwh_month_saved": kwh,
        "energy_saved_month": _mul(kwh, prices.electricity_per_kwh),
        "unmeasured_emptied_hosts": plan.unmeasured_emptied_hosts,
        "capacity_freed": {
            "gpus": len(ids), "gpu_hours_month": len(ids) * HOURS_PER_MONTH,
            "value_month": float(sum(known)) * HOURS_PER_MONTH if known else None,
            "unpriced_gpus": len(ids) - len(known),
        },
    }


def compute(gpus: pl.DataFrame, gmap: pl.DataFrame, physical: pl.DataFrame, owners: pl.DataFrame,
            powered: set[str], plan: Any, prices: Prices, table: ProfileTable | None = None) -> dict[str, Any]:
    """The whole cost section (pure: frames in, dict out)."""
    rows = per_gpu(gpus, gmap, physical, owners, powered, prices, table)
    total = rollup([{**r, "all": "all"} for r in rows], ("all",))
    return {
        "currency": prices.currency,
        "electricity_per_kwh": prices.electricity_per_kwh,
        "total": {k: v for k, v in total[0].items() if k != "all"} if total else None,
        "by_gpu": sorted(rows, key=lambda r: (-(r["idle_cost"] or 0.0), -(r["idle_gpu_hours"] or 0.0), r["gpu"])),
        "by_vm": rollup([r for r in rows if r["vm_moref"]], ("vcenter_uuid", "vm_moref", "vm_name", "owner", "team")),
        "by_owner": rollup(rows, ("owner", "email")),
        "by_team": rollup(rows, ("team",)),
        "plan": plan_money(plan, physical, prices),
    }


# ---------------------------------------------------------------- store readers (the only I/O here)
def physical_gpus(con: Any) -> pl.DataFrame:
    """Host PCI GPUs of the latest inventory: model name and framebuffer, keyed like the planner's GPU ids."""
    return frame(con,
        """
        SELECT p.vcenter_uuid, p.host_moref, lower(p.pci_id) AS pci, p.device_name, p.fb_bytes,
               coalesce(h.host_name, p.host_moref) || '/' || lower(p.pci_id) AS gpu_id
        FROM host_gpus p LEFT JOIN hosts h USING (vcenter_uuid, host_moref)
        WHERE p.vendor_id = 4318 OR p.fb_bytes IS NOT NULL
        """
    )


def owners_at(con: Any, t: dt.datetime) -> pl.DataFrame:
    """The ``vm_owner`` row valid at ``t`` per VM (latest ``snapshot_ts`` <= t)."""
    return frame(con,
        """
        SELECT vcenter_uuid, vm_moref, owner, team, cost_center, email FROM vm_owner WHERE snapshot_ts <= ?
        QUALIFY row_number() OVER (PARTITION BY vcenter_uuid, vm_moref ORDER BY snapshot_ts DESC) = 1
        """, [t])


def power_reported(con: Any, start: dt.datetime, end: dt.datetime) -> set[str]:
    """GPU ids with an energy counter or a power reading in at least one sample of the window."""
    rows = con.execute(
        """
        SELECT gpu_uuid FROM gpu_sample WHERE ts >= ? AND ts <= ?
        GROUP BY gpu_uuid HAVING count(energy_millijoules_total) + count(power_milliwatts) > 0
        """, [start, end]).fetchall()
    return {r[0] for r in rows}
