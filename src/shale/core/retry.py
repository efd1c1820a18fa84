"""Backoff strategies for the retry loop (``Database.transact``).

Strategies are objects, as in redis-py's ``backoff`` module, so callers
can swap them without touching the loop.
"""

from __future__ import annotations

import random
from typing import Protocol

__all__ = ["Backoff", "ExponentialBackoff", "FullJitterBackoff", "NoBackoff"]


class Backoff(Protocol):
    """How long to sleep before retry number ``attempt`` (starting at 1)."""

    def delay(self, attempt: int) -> float: ...


class NoBackoff:
    """Retry at once."""

    def delay(self, attempt: int) -> float:
        return 0.0


class ExponentialBackoff:
    """``base * 2**(attempt-1)`` seconds, capped."""

    def __init__(self, base: float = 0.01, cap: float = 1.0) -> None:
        self.base = base
        self.cap = cap

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base * 2.0 ** (attempt - 1))


_SHARED_RNG = random.Random()


class FullJitterBackoff(ExponentialBackoff):
    """A uniform random delay up to the exponential one.

    Randomness spreads out transactions that conflicted with each other, so
    they do not collide again on the next attempt. FoundationDB's client
    starts at 10 ms, doubles and caps at 1 s; so do the defaults here.
    """

    def __init__(
        self, base: float = 0.01, cap: float = 1.0, rng: random.Random | None = None
    ) -> None:
        super().__init__(base, cap)
        # Seeding a Random per transaction costs more than the transaction's
        # own bookkeeping; one shared generator is enough for jitter.
        self._rng = rng or _SHARED_RNG

    def delay(self, attempt: int) -> float:
        return self._rng.uniform(0.0, super().delay(attempt))
