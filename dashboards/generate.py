"""Write the dashboards' JSON: ``python -m dashboards.generate [--check]``.

The JSON under dashboards/json/ is committed (Grafana provisioning reads it); ``--check``
exits 1 when it differs from what the code generates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafanalib._gen import DashboardEncoder

from dashboards.build import ALL, UIDS

OUT_DIR = Path(__file__).resolve().parent / "json"


def render(name: str) -> str:
    dash = ALL[name]()
    data = json.loads(json.dumps(dash.to_json_data(), cls=DashboardEncoder))
    for var in data["templating"]["list"]:
        if var.get("includeAll") and var["current"].get("value") == "$__all":
            var["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return json.dumps(data, cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"


def paths() -> dict[str, Path]:
    return {name: OUT_DIR / f"{UIDS[name]}.json" for name in ALL}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is out of date")
    args = ap.parse_args(argv)
    stale = []
    OUT_DIR.mkdir(exist_ok=True)
    for name, path in paths().items():
        text = render(name)
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python -m dashboards.generate): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
