"""The auth backoff's rule (collector/vcenter/authgate.py), on a clock the test moves: after a
refused login, no login until initial × 2^(n-1) (capped) has passed, unless the password changed."""

from __future__ import annotations

from accelmon.collector.vcenter.authgate import AuthGate


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_refusals_back_off_doubling_up_to_the_cap() -> None:
    clock, pw = Clock(), ["wrong"]
    g = AuthGate(900, 4 * 3600, lambda: pw[0], clock)
    assert g.may_try() and not g.closed
    waits = []
    for _ in range(7):
        assert g.may_try()
        w = g.refused()
        waits.append(w)
        assert g.closed
        clock.t += w - 1  # one second before the backoff ends: still closed
        assert not g.may_try()
        clock.t += 1
    assert waits == [900, 1800, 3600, 7200, 14400, 14400, 14400]
    assert g.may_try()
    g.accepted()
    assert not g.closed and g.backoff_s(1) == 900 and g.may_try()
    assert g.refused() == 900  # the doubling starts again after an accepted login


def test_a_changed_password_may_try_at_once_and_an_unchanged_one_may_not() -> None:
    clock, pw = Clock(), ["wrong"]
    g = AuthGate(900, 3600, lambda: pw[0], clock)
    g.refused()
    clock.t += 10
    assert not g.may_try()
    pw[0] = "fixed"
    assert g.may_try()
    pw[0] = "wrong"  # changed back to the refused one: the backoff holds again
    assert not g.may_try()


def test_an_unreadable_password_does_not_lift_the_gate() -> None:
    def gone() -> str:
        raise FileNotFoundError("/etc/accelmon/vcenter.password")

    g = AuthGate(60, 60, gone, Clock())
    g.refused()
    assert not g.may_try()


def test_max_below_initial_means_a_fixed_initial_backoff() -> None:
    g = AuthGate(900, 60, lambda: "x", Clock())
    assert g.backoff_s(1) == g.backoff_s(5) == 900
