"""An APScheduler executor whose worker threads are daemon threads.

``concurrent.futures.ThreadPoolExecutor`` joins its workers at interpreter exit, so one poll
stuck in a 30 s vCenter timeout would hold ``SIGTERM`` hostage. These workers do not: on
shutdown the daemon gives running polls a short grace, flushes, and exits.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from apscheduler.executors.pool import BasePoolExecutor


class DaemonThreadPool:
    def __init__(self, max_workers: int, name: str = "accelmon-worker") -> None:
        self.max_workers = max_workers
        self.name = name
        self._q: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        if self._shutdown:
            raise RuntimeError("pool is shut down")
        f: Future[Any] = Future()
        self._q.put((f, fn, args, kwargs))
        with self._lock:
            if self._idle == 0 and len(self._threads) < self.max_workers:
                t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
            else:
                self._idle -= 1 if self._idle else 0
        return f

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            f, fn, args, kwargs = item
            if f.set_running_or_notify_cancel():
                try:
                    f.set_result(fn(*args, **kwargs))
                except BaseException as e:  # noqa: BLE001 - handed to the future
                    f.set_exception(e)
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True) -> None:
        self._shutdown = True
        for _ in self._threads:
            self._q.put(None)
        if wait:
            for t in self._threads:
                t.join()


class DaemonPoolExecutor(BasePoolExecutor):  # type: ignore[misc]
    def __init__(self, max_workers: int = 10) -> None:
        super().__init__(DaemonThreadPool(max_workers))
