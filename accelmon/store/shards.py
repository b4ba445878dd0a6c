"""Shards: one writer (daemon) per shard of a shared store root (docs/store.md, "Sharded writers").

Every writer appends, compacts, retains, garbage-collects and quarantines only under its own
``shard=<name>`` directories; readers glob all shards. What is relied on of the file system is
what NFS gives between machines: an atomic ``rename(2)`` within a directory and an exclusive
create (``link(2)`` of a complete temp file onto a new name fails with EEXIST if the name
exists, on NFSv3/v4 as locally). ``flock`` is only ever taken on a shard's own lock files, i.e.
only among the processes of the one machine that writes that shard.

* :func:`claim` binds a shard to a host the first time it writes (``shards/<name>.json``,
  exclusive create), so two machines configured with the same shard name fail loudly instead of
  both compacting the same partitions.
* :func:`migrate_legacy` moves a store of the unsharded layout (``tables/<t>/date=<day>``)
  into a shard, once, when a writer opens it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Protocol

from accelmon.shard_names import SHARD_RE, derive, sanitize, validate
from accelmon.store.errors import StoreError
from accelmon.store.fsutil import fsync_dir

log = logging.getLogger("accelmon.store.writer")

CLAIMS_DIR = "shards"
__all__ = ["CLAIMS_DIR", "SHARD_RE", "ShardedStore", "claim", "claim_path", "derive", "legacy_partitions",
           "migrate_legacy", "sanitize", "validate"]


class ShardedStore(Protocol):
    """What the shard functions need of the store (:class:`accelmon.store.layout.Layout`, which
    imports this module: a Protocol, not an import, so there is no cycle)."""

    root: Path
    shard: str

    def gen_root(self, tname: str, shard: str | None = None) -> Path: ...

    def link_path(self, tname: str, partition: str, shard: str | None = None) -> Path: ...

    def _swap_link(self, link: Path, target: Path) -> None: ...


def claim_path(store: ShardedStore, name: str) -> Path:
    return store.root / CLAIMS_DIR / f"{name}.json"


def claim(store: ShardedStore) -> None:
    """Bind ``store.shard`` to this host (exclusive create), or check that it is bound to it.

    Several processes of one host may write one shard (the daemon, ``accelmon compact``, an
    import); they coordinate with ``flock`` on the shard's own lock files. Two hosts may not."""
    host = socket.gethostname()
    path = claim_path(store, store.shard)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".tmp-{path.stem}-{uuid.uuid4().hex[:8]}")
    body = {"shard": store.shard, "host": host, "claimed_at": dt.datetime.now(dt.UTC).isoformat()}
    try:
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # exclusive create of a complete file (NFS-safe)
            fsync_dir(path.parent)
            return
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    try:
        owner = json.loads(path.read_text()).get("host")
    except (OSError, ValueError, AttributeError) as e:
        raise StoreError(f"{path}: unreadable shard claim ({e}); remove it if no other host writes "
                         f"shard {store.shard}") from None
    if owner != host:
        raise StoreError(f"{store.root}: shard {store.shard} is written by host {owner} ({path}); give this "
                         f"daemon another [store] shard, or remove that file if {owner} no longer writes it")


def legacy_partitions(root: Path, tname: str) -> list[Path]:
    """Partition links of the unsharded layout: ``tables/<t>/date=<day>``."""
    d = root / "tables" / tname
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.name.startswith("date=") and p.is_symlink())


def migrate_legacy(store: ShardedStore, tname: str) -> int:
    """Move a table's unsharded partitions into ``store.shard`` (the caller holds the shard's locks).

    Per partition: rename ``.gen/<t>/date=<day>`` to ``.gen/<t>/shard=<s>/date=<day>`` (one
    directory rename), point a new link ``tables/<t>/shard=<s>/date=<day>`` at the same
    generation, drop the old link. A reader in between sees that one day missing for an instant
    (the layout changes once, at the first start of a sharded writer); a kill in between is
    completed by the next start (the old link then dangles and its generation is found moved)."""
    moved = 0
    for link in legacy_partitions(store.root, tname):
        day = link.name.split("=", 1)[1]
        old_gen = Path(os.path.normpath(link.parent / os.readlink(link)))
        src = store.root / ".gen" / tname / link.name
        dst = store.gen_root(tname) / link.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir() and not dst.exists():
            os.rename(src, dst)
            fsync_dir(src.parent)
            fsync_dir(dst.parent)
        if dst.is_dir():
            gen = dst / old_gen.name
            if not gen.is_dir():
                gen.mkdir(parents=True)
            new_link = store.link_path(tname, day)
            if not new_link.is_symlink():
                new_link.parent.mkdir(parents=True, exist_ok=True)
                store._swap_link(new_link, gen)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        fsync_dir(link.parent)
        moved += 1
    for lock in (".append.lock", ".compact.lock"):
        with contextlib.suppress(OSError):
            (store.root / ".gen" / tname / lock).unlink()
    return moved
