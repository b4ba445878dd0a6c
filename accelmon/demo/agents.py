"""Host several simulated guest agents in one process (the demo's GPU VMs).

    python -m accelmon.demo.agents --ready READY.json SPEC.json [SPEC.json ...]

Each spec runs the real agent (``accelmon.collector.agent``: NVML poller, counters, HTTP
server) over the simulated NVML, listening on its own free loopback port. When all listen,
READY.json maps each spec file name to its ``/metrics`` URL. SIGTERM/SIGINT stop them all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from accelmon.collector.agent.main import build_agent
from accelmon.collector.agent.server import AgentHTTPServer, TokenSource
from accelmon.config import Config
from accelmon.demo.simnvml import simulated_backend


def serve(specs: list[Path], ready: Path, poll_interval: float = 1.0) -> int:
    cfg = Config.model_validate({"agent": {"listen": "127.0.0.1:0", "poll_interval": poll_interval}})
    running: list[tuple[Any, Any, threading.Thread]] = []
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    urls: dict[str, str] = {}
    try:
        for spec in specs:
            agent = build_agent(cfg, simulated_backend(str(spec)))
            server = AgentHTTPServer(agent, "127.0.0.1:0", tokens=TokenSource(None, None))
            agent.poll_once()
            agent.start_polling()
            running.append((agent, server, server.serve_in_thread()))
            urls[spec.name] = f"{server.url}/metrics"
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "agents": urls}))
        tmp.rename(ready)
        while not stop.wait(0.5):
            pass
    finally:
        for agent, server, t in running:
            server.shutdown()
            server.server_close()
            t.join(timeout=5)
            agent.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m accelmon.demo.agents", description=__doc__.splitlines()[0])
    ap.add_argument("--ready", type=Path, required=True, help="write the agents' URLs here when all listen")
    ap.add_argument("--poll-interval", type=float, default=1.0)
    ap.add_argument("specs", type=Path, nargs="+")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    return serve(args.specs, args.ready, args.poll_interval)


if __name__ == "__main__":
    sys.exit(main())
