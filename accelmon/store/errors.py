"""The store's one exception, below every store module (the shard claim, the layout and the
writer raise it)."""

from __future__ import annotations


class StoreError(Exception):
    """A problem with the data dir that the user must fix (one line, names the path)."""
