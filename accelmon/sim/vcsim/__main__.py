"""Run the seeded simulator standalone: ``python -m accelmon.sim.vcsim --vms 10000``.

Prints the URL (and where the credentials are), then serves until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from accelmon.errors import UserError
from accelmon.sim.vcsim import DEFAULT_USER, Vcsim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m accelmon.sim.vcsim", description=__doc__)
    ap.add_argument("--clusters", type=int, default=2)
    ap.add_argument("--hosts-per-cluster", type=int, default=3)
    ap.add_argument("--vms", type=int, default=60)
    ap.add_argument("--gpu-vm-ratio", type=float, default=1 / 9)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--vmotions", type=int, default=-1, help="extra random vGPU vMotions (-1: automatic)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port")
    ap.add_argument("--no-tls", action="store_true")
    ap.add_argument("--api-version", default="7.0.3.0")
    ap.add_argument("--user", default=DEFAULT_USER)
    ap.add_argument("--password-env", default="VCSIM_PASSWORD",
                    help="environment variable holding the password (random if unset)")
    ap.add_argument("--connection-file", type=Path, default=None,
                    help="write url/user/password/ca_file/manifest here (mode 0600)")
    a = ap.parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        sim = Vcsim.start(
            clusters=a.clusters, hosts_per_cluster=a.hosts_per_cluster, vms=a.vms,
            gpu_vm_ratio=a.gpu_vm_ratio, seed=a.seed, tls=not a.no_tls, port=a.port, host=a.host,
            user=a.user, password=os.environ.get(a.password_env) or None, vmotions=a.vmotions,
            api_version=a.api_version,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    conn = a.connection_file or sim.run_dir / "connection.json"
    fd = os.open(conn, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": sim.url, "user": sim.user, "password": sim.password,
                   "ca_file": str(sim.ca_file) if sim.ca_file else None,
                   "manifest": str(sim.run_dir / "manifest.json")}, f)
    s = sim.manifest["summary"]
    print(f"url={sim.url} user={sim.user} connection_file={conn} ca_file={sim.ca_file} pid={sim.pid} "
          f"hosts={s['hosts']} vms={s['vms']} gpu_vms={s['gpu_vms']} start_s={sim.start_seconds:.1f} "
          f"rss_mb={sim.rss_bytes() / 2**20:.0f}", flush=True)
    while not done.wait(1):
        if not sim.alive:
            print("error: vcsim exited", file=sys.stderr)
            return 1
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
