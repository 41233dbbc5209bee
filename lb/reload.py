"""When to reload: coalescing, at most one reload per ``RELOAD_MIN_INTERVAL`` (SPEC §6).
Pure: the clock is an argument. kubernetes-ingress keeps this decision apart from the
process control and the runtime client, and so do we."""

from __future__ import annotations

import math


class ReloadGate:
    """Reloads asked for while one is not allowed yet are queued and run together."""

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self.last = -math.inf
        self.pending: list[str] = []

    def request(self, reason: str) -> None:
        if reason not in self.pending:
            self.pending.append(reason)

    def wait(self, now: float) -> float:
        """Seconds until the pending reload may run (0: now); ``inf`` if none is pending."""
        if not self.pending:
            return math.inf
        return max(0.0, self.last + self.min_interval - now)

    def take(self, now: float) -> list[str]:
        """The queued reasons, in the order they were asked; the reload happens now."""
        reasons, self.pending = self.pending, []
        self.last = now
        return reasons
