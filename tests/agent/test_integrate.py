"""Integration of the driver's sample ring into busy/idle/unobserved seconds."""

from __future__ import annotations

from accelmon.collector.agent.integrate import GaugeIntegrator, RingIntegrator

P = 166_667  # 1/6 s in µs


def test_each_interval_is_credited_by_the_sample_that_ends_it() -> None:
    r = RingIntegrator(last_ts=1_000_000)
    mean, credited = r.add([(1_000_000 + P * i, v) for i, v in enumerate([0, 50, 0, 100, 0], start=1)])
    assert r.busy_us == 2 * P and r.idle_us == 3 * P and r.unobserved_us == 0
    assert credited == 5 * P and mean == 30.0
    assert r.last_ts == 1_000_000 + 5 * P


def test_first_sample_without_a_reference_is_not_credited() -> None:
    r = RingIntegrator()
    r.add([(P, 100), (2 * P, 100)])
    assert r.busy_us == P  # only the interval between the two samples


def test_duplicates_and_old_samples_are_ignored() -> None:
    r = RingIntegrator(last_ts=10 * P)
    r.add([(11 * P, 10), (11 * P, 10), (9 * P, 100), (12 * P, 0)])
    assert (r.busy_us, r.idle_us) == (P, P)
    r.add([(12 * P, 100)])  # already seen
    assert (r.busy_us, r.idle_us) == (P, P)


def test_a_wrapped_ring_is_unobserved_not_guessed() -> None:
    r = RingIntegrator(last_ts=0)
    r.add([(P * i, 100) for i in range(1, 11)])
    busy = r.busy_us
    gap_start = 10 * P
    late = [(gap_start + 300 * P + P * i, 0) for i in range(1, 11)]  # 300 periods later
    r.add(late)
    assert r.unobserved_us == (late[0][0] - gap_start) - P
    assert r.idle_us == 10 * P and r.busy_us == busy
    assert r.busy_us + r.idle_us + r.unobserved_us == late[-1][0] - P  # everything after the first sample


def test_gauge_fallback_credits_poll_intervals() -> None:
    g = GaugeIntegrator()
    g.add(100.0, 50, max_gap_s=3)
    g.add(101.0, 50, max_gap_s=3)
    g.add(102.0, 0, max_gap_s=3)
    g.add(110.0, 0, max_gap_s=3)
    assert (g.busy_s, g.idle_s, g.unobserved_s) == (1.0, 4.0, 5.0)
