"""The demo's prices and its dry-run mail (``accelmon demo --mail-to ADDR``): .eml files, nothing sent.

Example prices only (per GPU-hour, per kWh) so the demo report shows idle cost; see docs/cost.md.
The demo runs one analysis, so its digests are due after 1 flagged day (``digest_after_days = 1``);
the default elsewhere is 5. Owners come from the estate's vSphere tags/attributes (``vm_owner``);
flagged GPUs without an owner e-mail are counted, never mailed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelmon.config_cost import ADDR_RE
from accelmon.errors import UserError
from accelmon.mail.cli import mail_after_report

COST_TOML = """[cost]
currency = "USD"
gpu_hour_price = { A100 = 2.50, H100 = 4.00, L40S = 1.20, A10 = 0.80, T4 = 0.35, default = 1.00 }
electricity_per_kwh = 0.15
"""


def check_address(mail_to: str | None) -> None:
    if mail_to is not None and not ADDR_RE.match(mail_to):
        raise UserError(f'--mail-to: not an e-mail address: "{mail_to}"')


def mail_toml(mail_to: str | None, out_dir: Path) -> str:
    if not mail_to:
        return ""
    return "\n".join(["[mail]", 'from = "accelmon-demo@example.com"', f"report_to = [{json.dumps(mail_to)}]",
                      "digest_after_days = 1", f"dry_run_dir = {json.dumps(str(out_dir))}", ""])


def write_mail(store: Any, cfg: Any, doc: dict[str, Any], report_dir: Path) -> list[str]:
    """The report mail and the digests as .eml files (mail.dry_run_dir); one line per kind. ``doc``:
    the report run's JSON document (no report file is read back)."""
    return mail_after_report(store, cfg, doc, report_dir, dry_run=True)


def cost_line(doc: dict[str, Any]) -> str:
    """The report's idle cost, fleet and top teams, in one line (empty when unknown)."""
    try:
        c = doc.get("cost") or {}
        t, cur = c.get("total") or {}, c.get("currency", "")
        teams = ", ".join(f"{x['team']} {x['idle_cost']:,.0f}" for x in c.get("by_team", [])[:4]
                          if x.get("idle_cost") is not None)
        return (f"idle cost {t['idle_cost']:,.0f} {cur} over the window" if t.get("idle_cost") is not None
                else "idle cost unpriced") + (f" (by team: {teams})" if teams else "")
    except (KeyError, TypeError):
        return ""
