"""Integration of the driver's utilization readings into busy/idle/unobserved seconds.

Definition (NVML, nvmlUtilization_t.gpu): "Percent of time over the past sample period during
which one or more kernels was executing on the GPU", so a reading v over dt is dt·v/100 busy.
"""

from __future__ import annotations

import pytest

from accelmon.collector.agent.integrate import GaugeIntegrator, RingIntegrator, split

P = 166_667  # 1/6 s in µs


def test_split_is_the_nvml_definition() -> None:
    assert split(1.0, 10) == pytest.approx((0.1, 0.9))
    assert split(2.0, 0) == (0.0, 2.0) and split(2.0, 100) == (2.0, 0.0)
    assert split(1.0, 150) == (1.0, 0.0) and split(1.0, -5) == (0.0, 1.0)  # clamped, never negative idle


def test_each_interval_is_credited_by_its_share_of_the_sample_that_ends_it() -> None:
    r = RingIntegrator(last_ts=1_000_000, capacity=100)
    values = [0, 50, 0, 100, 0]
    mean, credited = r.add([(1_000_000 + P * i, v) for i, v in enumerate(values, start=1)])
    assert r.busy_us == pytest.approx(1.5 * P) and r.idle_us == pytest.approx(3.5 * P) and r.unobserved_us == 0
    assert credited == 5 * P and mean == pytest.approx(30.0)
    assert r.last_ts == 1_000_000 + 5 * P


def test_a_steady_ten_percent_gpu_is_ten_percent_busy_not_all_busy() -> None:
    r = RingIntegrator(last_ts=P, capacity=1000)
    r.add([(P * i, 10) for i in range(2, 602)])  # 100 s of samples at 10 %
    assert r.busy_us / (r.busy_us + r.idle_us) == pytest.approx(0.10)
    assert r.busy_us + r.idle_us == pytest.approx(600 * P)


def test_first_sample_without_a_reference_is_not_credited() -> None:
    r = RingIntegrator()
    r.add([(P, 100), (2 * P, 100)])
    assert r.busy_us == P  # only the interval between the two samples


def test_duplicates_and_old_samples_are_ignored() -> None:
    r = RingIntegrator(last_ts=10 * P, capacity=100)
    r.add([(11 * P, 10), (11 * P, 10), (9 * P, 100), (12 * P, 0)])
    assert (r.busy_us, r.idle_us) == pytest.approx((0.1 * P, 1.9 * P))
    r.add([(12 * P, 100)])  # already seen
    assert (r.busy_us, r.idle_us) == pytest.approx((0.1 * P, 1.9 * P))


def test_a_wrapped_ring_is_unobserved_not_guessed() -> None:
    r = RingIntegrator(last_ts=0)
    r.add([(P * i, 100) for i in range(1, 11)])  # capacity seen: 10
    busy = r.busy_us
    gap_start = 10 * P
    late = [(gap_start + 300 * P + P * i, 0) for i in range(1, 11)]  # 300 periods later, a full ring
    r.add(late)
    assert r.unobserved_us == (late[0][0] - gap_start) - P
    assert r.idle_us == 10 * P and r.busy_us == busy
    assert r.busy_us + r.idle_us + r.unobserved_us == late[-1][0] - P  # everything after the first sample


def test_a_ring_that_ran_dry_is_idle_time_observed() -> None:
    """No samples between two samples of one answer: the driver took none (idle), not a wrap."""
    r = RingIntegrator(last_ts=P, capacity=100)
    r.add([(2 * P, 60), (3 * P, 60), (20 * P, 60), (21 * P, 60)])
    assert r.unobserved_us == 0
    assert r.busy_us == pytest.approx(4 * 0.6 * P)
    assert r.busy_us + r.idle_us == pytest.approx(20 * P)


def test_not_found_credits_the_poll_interval_by_the_current_reading() -> None:
    r = RingIntegrator()
    r.prime([(5 * P, 0)], now=100.0)
    r.no_new_samples(101.0, 0.0, max_gap_s=5)  # idle GPU, ring ran dry
    assert (r.busy_us, r.idle_us, r.unobserved_us) == (0.0, 1e6, 0.0)
    assert r.last_ts == 5 * P + 1_000_000  # moved on in the driver's clock by the same duration
    r.no_new_samples(102.0, 30.0, max_gap_s=5)  # the rates say 30 %: credited by that
    assert r.busy_us == pytest.approx(0.3e6) and r.idle_us == pytest.approx(1.7e6)
    r.no_new_samples(112.0, 0.0, max_gap_s=5)  # a stalled agent: past the gap it is unknown
    assert r.unobserved_us == pytest.approx(5e6) and r.idle_us == pytest.approx(6.7e6)


def test_after_an_outage_the_gap_is_unobserved() -> None:
    r = RingIntegrator()
    r.prime([(P, 50)], now=10.0)
    r.mark_down(30.0)
    r.no_new_samples(31.0, 0.0, max_gap_s=5)
    assert r.idle_us == 0 and r.unobserved_us == pytest.approx(21e6)


def test_timestamps_in_another_clock_domain_are_only_compared_with_each_other() -> None:
    """A driver clock since boot (µs) far below the host's epoch clock: same result."""
    for base in (10 * P, 1_700_000_000_000_000):
        r = RingIntegrator()
        r.prime([(base, 0)], now=1_700_000_000.0)
        r.add([(base + P * i, 40) for i in range(1, 61)], now=1_700_000_010.0)
        assert r.busy_us == pytest.approx(0.4 * 60 * P) and r.unobserved_us == 0


def test_gauge_fallback_credits_poll_intervals_by_their_reading() -> None:
    g = GaugeIntegrator()
    g.add(100.0, 50, max_gap_s=3)
    g.add(101.0, 50, max_gap_s=3)
    g.add(102.0, 0, max_gap_s=3)
    g.add(110.0, 0, max_gap_s=3)
    assert (g.busy_s, g.idle_s, g.unobserved_s) == (0.5, 4.5, 5.0)
