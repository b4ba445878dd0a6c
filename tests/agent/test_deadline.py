"""The shared scrape-deadline thread (collector/deadline.py): cancelled deadlines never fire,
the others fire, and a callback that blocks does not hold up the next deadline."""

from __future__ import annotations

import threading

from accelmon.collector.deadline import Deadline


def test_cancelled_never_fire_others_do_and_a_blocked_callback_delays_nothing() -> None:
    fired: list[int] = []
    done = threading.Event()
    release = threading.Event()
    lock = threading.Lock()

    def hit(i: int) -> None:
        with lock:
            fired.append(i)
            if len(fired) == 10:
                done.set()

    Deadline(0.01, release.wait)  # blocks until the end of the test
    ds = [Deadline(0.02 + 0.01 * (i % 4), lambda i=i: hit(i)) for i in range(20)]
    for d in ds[::2]:
        d.cancel()
    try:
        assert done.wait(10), fired
        Deadline(0.01, lambda: hit(99))
        extra = threading.Event()
        Deadline(0.02, extra.set)
        assert extra.wait(10)
    finally:
        release.set()
    assert sorted(fired)[:10] == list(range(1, 20, 2))
