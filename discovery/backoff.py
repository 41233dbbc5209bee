"""Exponential back-off with jitter for loops that retry between other work.

tenacity's decorators retry one call; the daemons' loops interleave retries with signal
checks and other timers, so they only need the delays: this is those ten lines.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays ``initial * 2**n`` capped at ``maximum``, each with up to 25 % jitter."""

    def __init__(
        self, initial: float = 0.1, maximum: float = 2.0, *, rng: random.Random | None = None
    ):
        self.initial = initial
        self.maximum = maximum
        self._attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next(self) -> float:
        base = min(self.maximum, self.initial * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return float(base * (1 - 0.25 * self._rng.random()))

    def reset(self) -> None:
        self._attempt = 0

    @property
    def failing(self) -> bool:
        return self._attempt > 0
