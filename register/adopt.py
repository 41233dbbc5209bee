"""Which leases of our ``NODE_NAME`` a starting register may adopt. Pure: no I/O, no clock.

A restarted register finds its keys by the ``NODE`` of the service records and keeps
their lease alive (SPEC §5). A lease whose records name our node is either a dead
predecessor's (this host's previous register) or a *live twin's*: another register,
elsewhere, misconfigured with the same ``NODE_NAME``. Adopting a twin's lease would make
two registers share one lease and delete or overwrite each other's keys. The two look the
same in etcd except for one thing: a live register refreshes its lease (every TTL/3), a
dead one does not. So the register watches each candidate lease's remaining TTL for a
while before adopting it, without refreshing it itself, and adopts only leases nobody
refreshed.

etcd answers the remaining TTL in whole seconds, truncated. Between two answers ``a`` and
``b`` of a lease nobody refreshed, the true remaining TTL fell by at least the time from
``a``'s reply to ``b``'s request, so ``b.ttl < a.ttl + 1 - (b.sent - a.received)``; an
answer at or above that bound proves a refresh, whatever the network delays (no false
alarm, only a late one). A twin refreshes every TTL/3 and so keeps its remaining TTL
above 2/3 of it: with ``REGISTER_TTL`` ≥ 6 it never reads 1 s or less, while a dead
predecessor's lease that low is adopted at once, before it expires.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: A lease answering this many seconds or fewer is adopted at once: it will soon expire
#: and take our keys with it, and a twin's never falls this low (TTL ≥ 6).
DYING = 1
#: Watched this long past one refresh interval (TTL/3) of a twin, a lease nobody
#: refreshed is taken for a dead predecessor's.
SLACK = 1.5


@dataclass(frozen=True)
class Sample:
    """One answer of etcd's LeaseTimeToLive, and when it was asked and answered."""

    sent: float
    received: float
    ttl: int  # whole seconds left; < 0: the lease is gone


def refreshed(samples: Sequence[Sample]) -> bool:
    """Did someone refresh the lease between two of these answers?"""
    for i, a in enumerate(samples):
        if a.ttl < 0:
            continue
        for b in samples[i + 1 :]:
            if b.ttl >= 0 and b.ttl >= a.ttl + 1 - (b.sent - a.received):
                return True
    return False


class Verdict(enum.Enum):
    WATCHING = "watching"
    GONE = "gone"  # expired or revoked: nothing to adopt
    DEAD = "dead"  # nobody refreshes it: a predecessor's, ours to adopt
    LIVE = "live"  # somebody refreshes it: another register with our NODE_NAME


@dataclass
class Candidates:
    """The leases of our node's records, watched until each has a verdict."""

    leases: Iterable[int]
    ttl: int  # our REGISTER_TTL: the twin is assumed to have the same
    started: float
    samples: dict[int, list[Sample]] = field(init=False)

    def __post_init__(self) -> None:
        self.samples = {lease: [] for lease in sorted(self.leases)}

    @property
    def window(self) -> float:
        return self.ttl / 3 + SLACK

    def add(self, lease: int, sample: Sample) -> None:
        self.samples[lease].append(sample)

    def verdict(self, lease: int, now: float) -> Verdict:
        samples = self.samples[lease]
        if not samples:
            return Verdict.WATCHING
        if samples[-1].ttl < 0:
            return Verdict.GONE
        if refreshed(samples):
            return Verdict.LIVE
        if samples[-1].ttl <= DYING or now - self.started >= self.window:
            return Verdict.DEAD
        return Verdict.WATCHING

    def watching(self, now: float) -> list[int]:
        """The leases without a verdict yet, to ask about again."""
        return [lease for lease in self.samples if self.verdict(lease, now) is Verdict.WATCHING]

    def dying(self, lease: int) -> bool:
        """Must it be adopted now (it would expire before the watch is over)?"""
        samples = self.samples[lease]
        return bool(samples) and 0 <= samples[-1].ttl <= DYING and not refreshed(samples)

    def outcome(self, now: float) -> tuple[list[int], list[int]]:
        """(dead, live) once nothing is watched: the leases nobody refreshed (ours to
        adopt), and those another register keeps alive."""
        dead, live = [], []
        for lease in self.samples:
            verdict = self.verdict(lease, now)
            if verdict is Verdict.LIVE:
                live.append(lease)
            elif verdict is Verdict.DEAD:
                dead.append(lease)
        return dead, live
