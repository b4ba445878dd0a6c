"""``accelmon run``: the entry point the CLI calls."""

from __future__ import annotations

import logging
import resource
import signal
import threading
from types import FrameType

from accelmon.config import Config
from accelmon.daemon import redact
from accelmon.daemon.service import Daemon
from accelmon.errors import UserError
from accelmon.exporter.server import MetricsApp, serve
from accelmon.store.writer import Store

log = logging.getLogger("accelmon.daemon")


def raise_fd_limit(want: int = 65536) -> tuple[int, int]:
    """Raise the soft open-files limit towards the hard one (as Go programs do at start).

    The daemon keeps one kept-alive connection per agent: 2,000 agents need 2,000 sockets, and a
    systemd service starts with a soft limit of 1,024. Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, e)
            return soft, soft
        return soft, target
    return soft, soft


def run_daemon(cfg: Config, store: Store, *, once: bool = False) -> int:
    """Run the daemon until SIGTERM/SIGINT (or, with ``once``, poll every source one time,
    flush and return). Returns the process exit code."""
    redact.install(cfg)
    before, after = raise_fd_limit()
    if after != before:
        log.debug("open-files limit raised from %d to %d", before, after)
    daemon = Daemon(cfg, store)
    if once:
        daemon.prepare()
        return daemon.run_once()


    app = MetricsApp(daemon.state, cfg.exporter)
    try:  # bind first: a taken port fails fast, before any source is set up
        server = serve(app, cfg.exporter.listen)
    except OSError as e:
        raise UserError(f"{cfg.source_file}: exporter.listen: cannot listen on {cfg.exporter.listen}: "
                        f"{e.strerror or e}") from None
    try:
        daemon.prepare()
    except BaseException:
        server.stop()
        raise
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; flushing and exiting", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, on_signal)
    daemon.start()
    host, _, _ = cfg.exporter.listen.rpartition(":")
    log.info(
        "accelmon daemon running: %d source job(s), /metrics on %s://%s:%d/metrics, data in %s",
        len(daemon.runners), "https" if server.httpd.tls else "http", host or "0.0.0.0", server.port, store.root,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        ok = daemon.stop()
        server.stop()
    return 0 if ok else 1
