"""The auth backoff of one vCenter session: after a refused login, no login until it passed.

vSphere answers a wrong user name or password with the ``InvalidLogin`` fault ("Thrown when the
user name or password is incorrect", vSphere Web Services API reference, ``SessionManager.Login``),
and vCenter Single Sign-On locks an account after a number of failed logins within a window (its
lockout policy, e.g. 5 failures within 180 s, unlocked after 900 s: "Configure the Account
Lockout Policy for vCenter Single Sign-On", VMware Cloud Foundation docs).  So a refusal is not
retried on the polling schedule: until ``auth_backoff`` has passed (doubling per further refusal
up to ``auth_backoff_max``) every caller gets the same error without a request to vCenter.  A
changed password (``password_file``/``password_env`` are re-read; compared by a salted hash kept
in memory only) lifts the gate at once, as does a restart (a new session).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable


class AuthGate:
    """Whether a login may be sent now; ``clock`` is ``time.monotonic`` (a parameter for tests)."""

    def __init__(self, initial_s: float, max_s: float, secret: Callable[[], str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.initial_s = float(initial_s)
        self.max_s = max(float(max_s), self.initial_s)
        self._secret = secret
        self._clock = clock
        self._salt = os.urandom(16)
        self.failures = 0  # refused logins in a row
        self.retry_at = 0.0  # clock() before which no login is sent
        self._refused_fp: bytes | None = None

    def _fingerprint(self) -> bytes | None:
        try:
            s = self._secret()
        except (OSError, KeyError):  # the file or variable is gone: nothing to compare
            return None
        return hashlib.sha256(self._salt + s.encode()).digest()

    def backoff_s(self, failures: int) -> float:
        """Wait after the ``failures``-th refusal in a row: initial × 2^(n-1), capped at the max."""
        return min(self.initial_s * 2 ** max(failures - 1, 0), self.max_s)

    @property
    def closed(self) -> bool:
        """True while the last login was refused (until one is accepted)."""
        return self.failures > 0

    def may_try(self) -> bool:
        """May a login be sent now?  (No refusal standing, its backoff passed, or a new password.)"""
        if not self.failures or self._clock() >= self.retry_at:
            return True
        fp = self._fingerprint()
        return fp is not None and fp != self._refused_fp

    def refused(self) -> float:
        """Record a refused login; returns the seconds until the next attempt."""
        self.failures += 1
        wait = self.backoff_s(self.failures)
        self.retry_at = self._clock() + wait
        self._refused_fp = self._fingerprint()
        return wait

    def accepted(self) -> None:
        self.failures, self.retry_at, self._refused_fp = 0, 0.0, None
