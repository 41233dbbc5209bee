"""The mass-removal guard (lb/guard.py, SPEC §6) at its boundaries: the clock is an argument."""

from __future__ import annotations

import pytest

from discovery.records import ServicePath
from lb.desired import Desired, Instance, Service
from lb.guard import MassRemovalGuard

PATH = ServicePath.parse("/internal/app1/dev/web")


def state(**services: list[str]) -> Desired:
    """Desired state with the given instance IDs per service name."""
    return Desired(
        {
            name: Service(
                name,
                "http",
                PATH,
                tuple(Instance(i, "10.0.0.1", 8000 + n) for n, i in enumerate(sorted(ids))),
            )
            for name, ids in services.items()
        }
    )


def ids(desired: Desired) -> dict[str, list[str]]:
    return {name: [i.id for i in s.instances] for name, s in desired.services.items()}


def test_removing_exactly_half_passes_straight_through() -> None:
    """Exactly half of all servers (3 of 6) is not "more than half": nothing is held."""
    guard = MassRemovalGuard(window=15, grace=30)
    guard.filter(state(a=["1", "2", "3"], b=["4", "5", "6"]), 0)
    out = guard.filter(state(b=["4", "5", "6"]), 1)
    assert ids(out) == {"b": ["4", "5", "6"]}
    assert guard.held_count == 0 and guard.newly_held == []


def test_removing_one_more_than_half_is_held() -> None:
    """4 of 7 is more than half (and at least 3): all four are kept."""
    guard = MassRemovalGuard(window=15, grace=30)
    guard.filter(state(a=["1", "2", "3", "4"], b=["5", "6", "7"]), 0)
    out = guard.filter(state(b=["5", "6", "7"]), 1)
    assert ids(out) == {"a": ["1", "2", "3", "4"], "b": ["5", "6", "7"]}
    assert guard.held_count == 4


def test_removals_older_than_the_window_stop_counting() -> None:
    """8 servers, 3 gone at t=1 (let through), 2 more at t=20 with a 15 s window: the
    first three no longer count, so the two pass too."""
    guard = MassRemovalGuard(window=15, grace=30)
    guard.filter(state(a=[str(n) for n in range(1, 9)]), 0)
    out = guard.filter(state(a=["4", "5", "6", "7", "8"]), 1)
    assert ids(out) == {"a": ["4", "5", "6", "7", "8"]}
    out = guard.filter(state(a=["6", "7", "8"]), 20)
    assert ids(out) == {"a": ["6", "7", "8"]}
    assert guard.held_count == 0


def test_removals_within_the_window_add_up() -> None:
    """The same removals within one window (3 at t=1, 2 at t=10: 5 of 8) are a mass
    removal: the two that just went are held; the three let through before stay gone,
    and only the servers actually kept are reported as held."""
    guard = MassRemovalGuard(window=15, grace=30)
    guard.filter(state(a=[str(n) for n in range(1, 9)]), 0)
    guard.filter(state(a=["4", "5", "6", "7", "8"]), 1)
    out = guard.filter(state(a=["6", "7", "8"]), 10)
    assert ids(out) == {"a": ["4", "5", "6", "7", "8"]}
    assert guard.held_count == 2
    assert sorted(guard.newly_held) == [("a", "4"), ("a", "5")]


def test_fewer_than_the_minimum_are_never_held() -> None:
    """Two of two servers gone is all of them, but fewer than 3: let through."""
    guard = MassRemovalGuard(window=15, grace=30)
    guard.filter(state(a=["1", "2"]), 0)
    assert ids(guard.filter(Desired(), 1)) == {}
    assert guard.held_count == 0


def test_grace_zero_holds_nothing_and_reports_nothing() -> None:
    """MASS_REMOVAL_GRACE=0 turns the guard off: nothing kept, nothing logged as held."""
    guard = MassRemovalGuard(window=15, grace=0)
    guard.filter(state(a=["1", "2", "3", "4"]), 0)
    assert ids(guard.filter(Desired(), 1)) == {}
    assert guard.held_count == 0 and guard.newly_held == []


def test_held_servers_go_when_the_grace_ends() -> None:
    """Held servers are kept until MASS_REMOVAL_GRACE after the removal, then dropped."""
    guard = MassRemovalGuard(window=15, grace=30)
    guard.filter(state(a=["1", "2", "3", "4"]), 0)
    assert guard.filter(Desired(), 1).services["a"].instances
    assert guard.filter(Desired(), 30.5).services["a"].instances
    assert ids(guard.filter(Desired(), 31.5)) == {}
    assert guard.held_count == 0


def test_a_removal_exactly_one_window_ago_still_counts() -> None:
    """A window includes its end ("within one TTL"): 3 gone at t=1 and 2 more at t=16 with a 15 s
    window are 5 of 8 in one window, so the last two are held."""
    guard = MassRemovalGuard(window=15, grace=30)
    guard.filter(state(a=[str(n) for n in range(1, 9)]), 0)
    guard.filter(state(a=["4", "5", "6", "7", "8"]), 1)
    out = guard.filter(state(a=["6", "7", "8"]), 16)
    assert ids(out) == {"a": ["4", "5", "6", "7", "8"]}


@pytest.mark.parametrize(("now", "kept"), [(30.99, True), (31.0, False)])
def test_held_servers_go_once_the_grace_has_passed(now: float, kept: bool) -> None:
    """Held at t=1 with a 30 s grace: still kept just before t=31, gone at t=31."""
    guard = MassRemovalGuard(window=15, grace=30)
    guard.filter(state(a=["1", "2", "3", "4"]), 0)
    guard.filter(Desired(), 1)
    assert ("a" in guard.filter(Desired(), now).services) is kept
