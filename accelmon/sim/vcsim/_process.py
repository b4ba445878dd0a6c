"""Start, wait for and stop one seeded vcsim process."""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelmon.sim.vcsim._build import build

DEFAULT_USER = "administrator@vsphere.local"
READY = "VCSIM_READY "
_live: weakref.WeakSet[Vcsim] = weakref.WeakSet()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass(eq=False)
class Vcsim:
    """A running seeded vCenter simulator. Use :meth:`start`; stop with :meth:`stop` or ``with``."""

    url: str
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    manifest: dict[str, Any] = field(repr=False)
    pid: int
    ca_file: Path | None
    run_dir: Path
    start_seconds: float
    _proc: subprocess.Popen[bytes] = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    def start(
        cls,
        clusters: int = 2,
        hosts_per_cluster: int = 3,
        vms: int = 60,
        gpu_vm_ratio: float = 1 / 9,
        seed: int = 1,
        tls: bool = True,
        port: int = 0,
        host: str = "127.0.0.1",
        user: str = DEFAULT_USER,
        password: str | None = None,
        vmotions: int = -1,
        api_version: str = "7.0.3.0",
        session_idle_timeout_s: float | None = None,
        method_delay_ms: dict[str, int] | None = None,
        counter_key_offset: int = 0,
        timeout_s: float | None = None,
        guest_ip_prefix: str | None = None,
        tag_all_vms: bool = False,
    ) -> Vcsim:
        """Build (cached) and start the simulator on ``host:port`` (0 = a free port).

        Returns once it answers over HTTP(S). ``password`` defaults to a random one.
        ``vmotions`` is the number of extra random vGPU vMotions (-1: automatic).
        ``api_version`` 8.x adds vSphere 8 fields (vgpuMigrateDataSizeMB, ...).
        ``method_delay_ms`` slows SOAP methods down, e.g. ``{"QueryPerf": 2000}`` (a slow vCenter);
        ``session_idle_timeout_s`` expires idle sessions (NotAuthenticated on the next call).
        ``counter_key_offset`` shifts every perf counter key, as keys differ between real installs.
        ``guest_ip_prefix`` replaces the guest IPs' first octet ``10.``, e.g. ``"127."``: each VM's
        guest IP is then a loopback address an agent can listen on (discovery end to end).
        ``tag_all_vms`` puts owner/team tags and Owner/Team custom attributes on every VM that the
        ownership seeding (docs/vcsim.md "Owners") leaves without (the poll benchmark).
        """
        binary = build()
        password = password or secrets.token_urlsafe(12)
        run_dir = Path(tempfile.mkdtemp(prefix="accelmon-vcsim-", dir=_tmp_base()))
        args = [
            str(binary), "-dir", str(run_dir), "-remove-dir", "-listen", f"{host}:{port}",
            "-clusters", str(clusters), "-hosts-per-cluster", str(hosts_per_cluster), "-vms", str(vms),
            "-gpu-vm-ratio", repr(float(gpu_vm_ratio)), "-seed", str(seed), "-vmotions", str(vmotions),
            "-user", user, "-api-version", api_version, "-counter-key-offset", str(counter_key_offset),
        ]
        if not tls:
            args.append("-no-tls")
        if session_idle_timeout_s:
            args += ["-session-idle-timeout", f"{session_idle_timeout_s}s"]
        if guest_ip_prefix:
            args += ["-guest-ip-prefix", guest_ip_prefix]
        if tag_all_vms:
            args.append("-tag-all-vms")
        if method_delay_ms:
            args += ["-method-delay", ",".join(f"{k}={int(v)}" for k, v in method_delay_ms.items())]
        # datastore folders (govcsim-*) go under run_dir, removed with it even after a kill
        env = dict(os.environ, VCSIM_PASSWORD=password, TMPDIR=str(run_dir))
        main_thread = threading.current_thread() is threading.main_thread()
        with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "vcsim.log", "wb") as err:
            proc = subprocess.Popen(
                args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=run_dir,
                preexec_fn=_die_with_parent if main_thread else None,
            )
        t0 = time.monotonic()
        limit = timeout_s if timeout_s is not None else 30 + vms / 150
        try:
            ready = _wait_ready(proc, run_dir, limit)
            manifest = json.loads((run_dir / "manifest.json").read_text())
            ca_file = run_dir / "ca.pem" if tls else None
            sim = cls(
                url=ready["url"], host=host, port=int(ready["port"]), user=user, password=password,
                manifest=manifest, pid=proc.pid, ca_file=ca_file, run_dir=run_dir,
                start_seconds=0.0, _proc=proc,
            )
            sim._wait_answers(limit - (time.monotonic() - t0))
            sim.start_seconds = time.monotonic() - t0
        except BaseException:
            _kill(proc)
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        _live.add(sim)
        return sim

    # -- helpers for clients -------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context trusting this simulator's CA (None without TLS)."""
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))

    def folder_url(self, vm_name: str, file: str = "vmware.log") -> str:
        """The datastore /folder URL of a file in a VM's folder (needs a session cookie)."""
        ds = self.manifest["datastore"]
        return f"{self._base}/folder/{urllib.request.quote(vm_name)}/{file}?{ds['folder_query']}"

    def vmotion(self, vm: str, dest: str | None = None, fail: bool = False, drs: bool = False) -> dict[str, Any]:
        """Migrate VM ``vm`` (moref) now, as vCenter would show it (runtime.host change, events,
        vmware.log appended and rotated); ``fail`` ends it with maxSwitchoverTimeExceeded.
        Returns the migration's manifest record; :attr:`manifest` is reloaded."""
        q = urllib.parse.urlencode({"vm": vm, "dest": dest or "", "fail": int(fail), "drs": int(drs)})
        req = urllib.request.Request(f"{self._base}/accelmon/vmotion?{q}", method="POST")
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as r:
                record = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise ValueError(f"vmotion {vm}: {json.loads(e.read()).get('error', e.code)}") from None
        self.manifest = json.loads((self.run_dir / "manifest.json").read_text())
        return record

    def pause(self) -> None:
        """Freeze the simulator (SIGSTOP): connections hang, like an unresponsive vCenter."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    @property
    def _base(self) -> str:
        return self.url.rsplit("/sdk", 1)[0]

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the simulator process (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    # -- lifecycle -----------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM (the simulator removes its datastore folders), then SIGKILL; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)  # in case it was paused
        _kill(self._proc)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        _live.discard(self)

    def __enter__(self) -> Vcsim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_answers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + max(timeout_s, 5)
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self._base + "/about", timeout=5, context=self.ssl_context()) as r:
                    r.read()
                return
            except Exception as e:  # noqa: BLE001 - retried until the deadline
                last = e
                if not self.alive:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"vcsim at {self.url} does not answer: {last}")


def _tmp_base() -> str | None:
    """Where run dirs go: $ACCELMON_VCSIM_TMPDIR, else /dev/shm when it has room (creating
    10,000 VM folders is ~3x faster on tmpfs than on disk), else the system default."""
    if env := os.environ.get("ACCELMON_VCSIM_TMPDIR"):
        return env
    shm = "/dev/shm"
    try:
        st = os.statvfs(shm)
        if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize >= 512 << 20:
            return shm
    except OSError:
        pass
    return None


def _wait_ready(proc: subprocess.Popen[bytes], run_dir: Path, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    out = run_dir / "stdout.log"
    while True:
        text = out.read_text(errors="replace") if out.exists() else ""
        for line in text.splitlines():
            if line.startswith(READY):
                return json.loads(line[len(READY):])
        if proc.poll() is not None:
            err = (run_dir / "vcsim.log").read_text(errors="replace").strip().splitlines()
            tail = err[-1] if err else f"exit code {proc.returncode}"
            raise RuntimeError(f"vcsim exited during start: {tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"vcsim not ready after {timeout_s:.0f} s (log: {run_dir / 'vcsim.log'})")
        time.sleep(0.05)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@atexit.register
def _stop_all() -> None:
    for sim in list(_live):
        sim.stop()
