"""The exporter's family type and label helpers: they live in :mod:`accelmon.exposition`, the
one writer of ``/metrics`` text shared with the guest agent (kept importable here)."""

from __future__ import annotations

from accelmon.exposition import FastFamily, escape, fmt_value, label_string

__all__ = ["FastFamily", "escape", "fmt_value", "label_string"]
