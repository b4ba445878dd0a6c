"""Shard names (docs/store.md, "Sharded writers"): what ``[store] shard`` may be and the default
one. Pure functions on names, below both the config (which validates ``[store] shard``) and the
store (:mod:`accelmon.store.shards`, which claims and migrates shards)."""

from __future__ import annotations

import re
import socket

SHARD_RE = re.compile(r"^[a-z0-9_-]{1,64}$")


def validate(name: str) -> str:
    """``name`` if it is a valid shard name (``[a-z0-9_-]``, 1 to 64 characters), else ValueError."""
    if not isinstance(name, str) or not SHARD_RE.match(name):
        raise ValueError(f'not a shard name (1-64 of a-z 0-9 _ -): "{name}"')
    return name


def sanitize(text: str) -> str:
    """A shard name derived from any text (a vCenter name, a host name): lower case, every run of
    other characters replaced by one ``-``, at most 64 characters; ``default`` when nothing is left."""
    s = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-")[:64].strip("-")
    return s or "default"


def derive(vcenter_names: list[str] | None = None) -> str:
    """The default shard: the vCenter's name when the daemon watches exactly one vCenter, else this
    machine's host name (both sanitized)."""
    if vcenter_names and len(vcenter_names) == 1:
        return sanitize(vcenter_names[0])
    return sanitize(socket.gethostname().split(".")[0])

