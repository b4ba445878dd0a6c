from __future__ import annotations

import datetime as dt

import pytest

from accelmon.analytics.window import parse_since, resolve_window
from accelmon.errors import UserError

NOW = dt.datetime(2025, 3, 10, 12, tzinfo=dt.UTC)
D = dt.timedelta


def test_default_window_ends_now_or_at_the_newest_sample():
    live = resolve_window(since=None, from_=None, to=None, default_seconds=7 * 86400,
                          data_first=NOW - D(days=30), data_last=NOW - D(seconds=5), now=NOW)
    assert live.end == NOW - D(seconds=5) and live.seconds == 7 * 86400
    stale = resolve_window(since="24h", from_=None, to=None, default_seconds=7 * 86400,
                           data_first=NOW - D(days=60), data_last=NOW - D(days=40), now=NOW)
    assert stale.end == NOW - D(days=40) and stale.start == NOW - D(days=41)


def test_all_and_explicit_windows():
    w = resolve_window(since="all", from_=None, to=None, default_seconds=1, data_first=NOW - D(days=3),
                       data_last=NOW - D(days=1), now=NOW)
    assert (w.start, w.end) == (NOW - D(days=3), NOW - D(days=1))
    naive = dt.datetime(2025, 3, 1)  # naive = UTC
    w = resolve_window(since=None, from_=naive, to=naive + D(days=2), default_seconds=1, data_first=None,
                       data_last=None, now=NOW)
    assert w.start == naive.replace(tzinfo=dt.UTC) and w.seconds == 2 * 86400
    empty = resolve_window(since="all", from_=None, to=None, default_seconds=1, data_first=None, data_last=None,
                           now=NOW)
    assert empty.seconds == 0


@pytest.mark.parametrize("bad", ["7x", "", "d7", "0d", "-1h", "1.5.2d"])
def test_bad_since(bad):
    with pytest.raises(UserError, match="--since"):
        parse_since(bad)


def test_since_units():
    assert parse_since("90m") == 5400 and parse_since("2w") == 14 * 86400 and parse_since("ALL") is None
