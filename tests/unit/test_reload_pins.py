"""lb/reload.py: the reload gate queues each reason once and empties on every reload."""

from __future__ import annotations

import math

from lb.reload import ReloadGate


def test_a_reason_asked_twice_is_queued_once() -> None:
    """Asking for the same reload reason again while it waits adds nothing (one reload,
    counted once per reason)."""
    gate = ReloadGate(1.0)
    gate.take(0.0)
    for reason in ("new_backend", "slots_exhausted", "new_backend", "slots_exhausted"):
        gate.request(reason)
    assert gate.take(1.0) == ["new_backend", "slots_exhausted"]


def test_take_empties_the_queue() -> None:
    """After a reload nothing is pending: no further reload until one is asked for."""
    gate = ReloadGate(1.0)
    gate.request("template_changed")
    assert gate.take(0.0) == ["template_changed"]
    assert gate.wait(5.0) == math.inf
    assert gate.take(5.0) == []
    gate.request("reconcile")
    assert gate.take(10.0) == ["reconcile"]
