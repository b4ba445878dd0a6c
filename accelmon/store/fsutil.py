"""Durability helper shared by the store's writers: fsync a directory after a rename in it."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename/unlink inside ``path`` durable (POSIX: the directory entry itself is fsynced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
