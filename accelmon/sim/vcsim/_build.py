"""Compile the seeded vcsim (Go, govmomi simulator from Debian packages) once and cache it."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from accelmon.errors import UserError

SRC_DIR = Path(__file__).resolve().parent
BINARY_NAME = "vcsim-accelmon"
APT_HINT = "install the apt packages golang-go golang-github-vmware-govmomi-dev"
DEFAULT_GOPATH = "/usr/share/gocode"


def go_sources() -> list[Path]:
    return sorted(p for p in SRC_DIR.glob("*.go") if not p.name.endswith("_test.go"))


def source_hash() -> str:
    h = hashlib.sha256()
    for p in go_sources():
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("ACCELMON_CACHE_DIR") or "~/.cache/accelmon"
    return Path(base).expanduser() / "vcsim"


def binary_path() -> Path:
    return cache_root() / source_hash() / BINARY_NAME


def _gopath() -> str:
    return os.environ.get("ACCELMON_GOPATH") or DEFAULT_GOPATH


def _check_toolchain() -> tuple[str, str]:
    go = shutil.which("go")
    if go is None:
        raise UserError(f"vcsim: the Go compiler `go` was not found on PATH; {APT_HINT}")
    gopath = _gopath()
    sim = Path(gopath) / "src/github.com/vmware/govmomi/simulator"
    if not sim.is_dir():
        raise UserError(f"vcsim: govmomi sources not found at {sim}; {APT_HINT} (or set ACCELMON_GOPATH)")
    return go, gopath


def build(force: bool = False) -> Path:
    """Return the path of the compiled simulator, compiling it first if needed.

    The binary is cached under ``$ACCELMON_CACHE_DIR/vcsim/<hash of the Go sources>/`` (default
    ``~/.cache/accelmon``). Concurrent callers (several pytest processes) wait on a file lock
    and compile only once. Raises :class:`UserError` with one line when Go or govmomi is missing.
    """
    out = binary_path()
    if out.is_file() and not force:
        return out
    go, gopath = _check_toolchain()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.is_file() and not force:
            return out
        with tempfile.TemporaryDirectory(dir=out.parent, prefix="build-") as tmp:
            for p in go_sources():
                shutil.copy2(p, tmp)
            env = dict(os.environ, GOPATH=gopath, GO111MODULE="off", GOFLAGS="")
            tmp_bin = Path(tmp) / BINARY_NAME
            proc = subprocess.run(
                [go, "build", "-o", str(tmp_bin), "."],
                cwd=tmp, env=env, capture_output=True, text=True,
            )
            if proc.returncode != 0:
                log = out.parent / "build-error.log"
                log.write_text(proc.stdout + proc.stderr)
                first = next((ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()), "?")
                raise UserError(f"vcsim: go build failed: {first} (full output in {log})")
            os.replace(tmp_bin, out)
    return out
