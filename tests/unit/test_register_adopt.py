"""Which leases of its NODE_NAME a starting register adopts (register.adopt): a dead
predecessor's yes, a live twin's never (issue 8 item 8). Tables of etcd's answers."""

from __future__ import annotations

import pytest

from register.adopt import Candidates, Sample, Verdict, refreshed


def answers(*rows: tuple[float, int], rtt: float = 0.01) -> list[Sample]:
    """Samples from (seconds since the start, TTL answered)."""
    return [Sample(at, at + rtt, ttl) for at, ttl in rows]


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], False),
        (answers((0, 14)), False),
        # Nobody refreshes: the whole seconds go down with the clock.
        (answers((0, 14), (0.5, 13), (1.0, 13), (2.0, 12), (5.0, 9)), False),
        (answers((0, 14), (0.9, 14)), False),  # 14.99 → 14.09: still 14
        # A refresh: back up (a twin refreshes every TTL/3).
        (answers((0, 10), (1.0, 14)), True),
        # Not lower after more than a second: refreshed in between.
        (answers((0, 12), (1.5, 12)), True),
        (answers((0, 12), (1.5, 11), (3.2, 11)), True),
        # A slow answer may read one second high; no alarm for that.
        (answers((0, 12), (0.99, 12), rtt=0.5), False),
        # Gone.
        (answers((0, 2), (2.5, -1)), False),
    ],
)
def test_refreshed(samples: list[Sample], expected: bool) -> None:
    """A refresh is proven only by a TTL at or above what was left without one."""
    assert refreshed(samples) is expected


def test_a_dead_predecessors_lease_is_adopted_after_one_refresh_interval() -> None:
    """TTL 15: nobody refreshed the lease for 5 + 1.5 s: it is ours to adopt."""
    c = Candidates([7], ttl=15, started=0.0)
    for at, ttl in ((0.0, 13), (2.0, 11), (4.0, 9), (6.0, 7)):
        c.add(7, Sample(at, at + 0.01, ttl))
        assert c.verdict(7, at) is Verdict.WATCHING
    c.add(7, Sample(6.5, 6.51, 6))
    assert c.watching(6.5) == []
    assert c.outcome(6.5) == ([7], [])


def test_a_live_twins_lease_is_never_adopted() -> None:
    """Another register refreshes it (every TTL/3): live, whatever else happens."""
    c = Candidates([7, 8], ttl=15, started=0.0)
    c.add(7, Sample(0.0, 0.01, 11))
    c.add(8, Sample(0.0, 0.01, 12))
    c.add(7, Sample(2.0, 2.01, 14))  # refreshed
    c.add(8, Sample(2.0, 2.01, 10))
    assert c.verdict(7, 2.0) is Verdict.LIVE
    assert c.watching(2.0) == [8]
    c.add(8, Sample(6.5, 6.51, 5))
    assert c.outcome(6.5) == ([8], [7])


def test_a_dying_lease_is_adopted_at_once_and_a_gone_one_never() -> None:
    """A lease about to expire is adopted before the watch ends; an expired one is not."""
    c = Candidates([7, 8], ttl=15, started=0.0)
    c.add(7, Sample(0.0, 0.01, 1))
    c.add(8, Sample(0.0, 0.01, -1))
    assert c.dying(7) and not c.dying(8)
    assert c.verdict(7, 0.0) is Verdict.DEAD
    assert c.verdict(8, 0.0) is Verdict.GONE
    assert c.outcome(0.0) == ([7], [])
