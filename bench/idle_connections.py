"""1,000 idle connections against the daemon's /metrics exporter (the same server as the agent's).

Before accelmon/httpserver.py each idle keep-alive connection held a thread of its own, forever
(1,000 idle connections: 1,000 threads). Now: at most ``max_connections`` connection threads, the
longest-idle connection closed to make room, idle ones closed after ``idle_timeout``.

Opens N idle TCP connections (no request) to an exporter with the default limits (backlog 128,
64 connections, 30 s idle timeout), then scrapes /metrics 20 times while they are open, and counts
the server's connection threads. Last line:
``idle_connections=<N> conn_threads_max=<T> scrape_ok=<k>/20 scrape_ms_median=<S> evicted=<E>``
(expected: T <= 64, k = 20).
"""

from __future__ import annotations

import resource
import socket
import statistics
import sys
import threading
import time

import requests

from accelmon.config import ExporterConfig
from accelmon.daemon.state import DaemonState
from accelmon.exporter.server import MetricsApp, MetricsServer


def conn_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "accelmon-http-conn")


def main(n: int = 1000) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * n + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    srv = MetricsServer(MetricsApp(DaemonState(), ExporterConfig(listen="127.0.0.1:0"), process_metrics=False)).start()
    socks: list[socket.socket] = []
    peak = 0
    try:
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
            peak = max(peak, conn_threads())
        times, ok = [], 0
        for _ in range(20):
            t0 = time.perf_counter()
            r = requests.get(f"{srv.url}/metrics", timeout=30)
            times.append((time.perf_counter() - t0) * 1000)
            ok += r.status_code == 200
            peak = max(peak, conn_threads())
        evicted = srv.httpd.evicted
    finally:
        for s in socks:
            s.close()
        srv.stop()
    print(f"idle_connections={n} conn_threads_max={peak} scrape_ok={ok}/20 "
          f"scrape_ms_median={statistics.median(times):.1f} evicted={evicted}")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
