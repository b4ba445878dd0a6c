"""The analysed time window: parsing ``--since`` / ``--from`` / ``--to`` and the default rule.

Rule (docs/analytics.md): an explicit ``--from``/``--to`` is used as given. ``--since D``
and the default (``thresholds.window``) end at *now*, unless the newest GPU sample is
older than now: then the window ends at the newest sample (a store that stopped receiving
data still gets a full window of it, not a window of nothing). ``--since all`` spans the
first to the newest sample.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from accelmon.errors import UserError

_SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class Window:
    start: dt.datetime  # inclusive, UTC
    end: dt.datetime  # inclusive, UTC
    label: str = ""

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)


def parse_since(since: str) -> float | None:
    """``"7d"`` → seconds; ``"all"`` → None. Raises UserError naming ``--since``."""
    if since.strip().lower() == "all":
        return None
    m = _SINCE_RE.match(since)
    if not m or float(m.group(1)) <= 0:
        raise UserError(f'--since: not a duration like "7d", "24h", "30m" or "all": {since!r}')
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_time(value: str | None, option: str) -> dt.datetime | None:
    """``--from``/``--to``: an ISO 8601 time (UTC when it names no zone); None stays None. Raises
    UserError naming ``option``."""
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"{option}: not an ISO 8601 time: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def resolve_window(
    *,
    since: str | None,
    from_: dt.datetime | None,
    to: dt.datetime | None,
    default_seconds: float,
    data_first: dt.datetime | None,
    data_last: dt.datetime | None,
    now: dt.datetime | None = None,
) -> Window:
    """Apply the window rule. ``data_first``/``data_last``: oldest/newest GPU sample (or None)."""
    now = _utc(now or dt.datetime.now(dt.UTC))
    if since is not None and (from_ is not None or to is not None):
        raise UserError("--since cannot be combined with --from/--to")
    if from_ is not None or to is not None:
        end = _utc(to) if to is not None else now
        start = end - dt.timedelta(seconds=default_seconds) if from_ is None else _utc(from_)
        if start >= end:
            raise UserError(f"--from ({start.isoformat()}) must be before --to ({end.isoformat()})")
        return Window(start, end, f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} UTC")
    seconds = default_seconds if since is None else parse_since(since)
    if seconds is None:  # all
        if data_first is None or data_last is None:
            return Window(now, now, "all (no samples)")
        end = _utc(data_last)
        start = min(_utc(data_first), end)
        return Window(start, end, "all data")
    end = now if data_last is None else min(now, _utc(data_last))
    start = end - dt.timedelta(seconds=seconds)
    return Window(start, end, f"{_human(seconds)} ending {end:%Y-%m-%d %H:%M} UTC")


def _human(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{int(seconds // n)}{unit}"
    return f"{seconds:g}s"
