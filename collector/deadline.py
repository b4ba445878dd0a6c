"""One shared watchdog thread for scrape deadlines.

A scrape must end within its timeout even when the server drips bytes (a per-read socket
timeout never fires then). Starting a ``threading.Timer`` per scrape costs a thread start
per request (2,000 agents every 10 s: 200 threads a second); this module keeps one daemon
thread and a heap of deadlines instead.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

_lock = threading.Condition()
_heap: list[tuple[float, int, Callable[[], None]]] = []
_active: set[int] = set()  # pushed, neither fired nor cancelled
_ids = itertools.count()
_thread: threading.Thread | None = None


class Deadline:
    """``fn`` runs (on the watchdog thread) ``seconds`` from now unless :meth:`cancel` came first."""

    __slots__ = ("_id",)

    def __init__(self, seconds: float, fn: Callable[[], None]) -> None:
        global _thread
        self._id = next(_ids)
        with _lock:
            heapq.heappush(_heap, (time.monotonic() + seconds, self._id, fn))
            _active.add(self._id)
            if _thread is None or not _thread.is_alive():
                _thread = threading.Thread(target=_run, name="accelmon-deadlines", daemon=True)
                _thread.start()
            elif _heap[0][1] == self._id:
                _lock.notify()  # the new deadline is the earliest

    def cancel(self) -> None:
        with _lock:
            _active.discard(self._id)


def _run() -> None:
    while True:
        with _lock:
            while True:
                while _heap and _heap[0][1] not in _active:
                    heapq.heappop(_heap)  # cancelled
                if not _heap:
                    _lock.wait()
                    continue
                wait = _heap[0][0] - time.monotonic()
                if wait <= 0:
                    _, i, fn = heapq.heappop(_heap)
                    _active.discard(i)
                    break
                _lock.wait(wait)
        # an expired deadline is rare (a hung target); its callback may block briefly (closing a
        # response waits for the reader), so it gets its own thread and never delays the others
        threading.Thread(target=_call, args=(fn,), name="accelmon-deadline-fired", daemon=True).start()


def _call(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001, S110 - best effort
        pass
