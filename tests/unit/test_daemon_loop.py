"""The daemon loop all three daemons share (discovery.daemon.Loop): its error policy."""

from __future__ import annotations

import logging
import random
import threading

import pytest

from discovery.backoff import Backoff
from discovery.daemon import Loop, Stopper, Turn
from discovery.etcd import EtcdUnavailable
from discovery.metrics import Metrics


def _loop(cycle: object, metrics: Metrics | None = None) -> Loop:
    return Loop(
        "test",
        cycle,  # type: ignore[arg-type]
        stop=Stopper(),
        metrics=metrics,
        backoff=Backoff(0.1, 2.0, rng=random.Random(0)),
        clock=lambda: 42.0,
    )


def test_a_turn_waits_what_the_cycle_asks_and_records_what_it_did() -> None:
    """A good cycle's wait is used as is and its sentence is kept."""
    loop = _loop(lambda: Turn(3.5, "did a thing"))
    assert loop.turn() == 3.5
    assert loop.last_did == "did a thing"
    assert loop.last_turn == 42.0


def test_etcd_unavailable_backs_off_logs_once_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    """etcd down: growing back-off, one warning per outage, every failure counted."""
    metrics = Metrics()
    seen: list[EtcdUnavailable] = []

    def cycle() -> Turn:
        raise EtcdUnavailable("down")

    loop = _loop(cycle, metrics)
    loop.on_etcd_error = seen.append
    with caplog.at_level(logging.WARNING):
        delays = [loop.turn() for _ in range(5)]
    assert delays[0] < delays[-1] <= 2.0
    assert [r.message for r in caplog.records].count(
        "[test] etcd unavailable (down); retrying with back-off"
    ) == 1
    assert metrics.registry.get_sample_value("haroute_etcd_errors_total") == 5
    assert len(seen) == 5


def test_an_unexpected_error_is_a_reported_bug_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any other exception is logged as a bug with its trace, counted and backed off."""
    metrics = Metrics()
    calls = iter([ZeroDivisionError("boom"), None])

    def cycle() -> Turn:
        exc = next(calls)
        if exc is not None:
            raise exc
        return Turn(1.0, "recovered")

    loop = _loop(cycle, metrics)
    with caplog.at_level(logging.ERROR):
        first = loop.turn()
    assert 0 < first <= 0.1
    assert "please report it as a bug" in caplog.text
    assert caplog.records[0].exc_info is not None
    assert metrics.registry.get_sample_value("haroute_loop_errors_total") == 1
    assert loop.turn() == 1.0
    assert not loop.backoff.failing


def test_the_loop_ends_only_on_stop_and_a_wake_cuts_the_wait_short() -> None:
    """run() turns until stop; a set wake event starts the next cycle at once."""
    stop = Stopper()
    wake = threading.Event()
    count = 0

    def cycle() -> Turn:
        nonlocal count
        count += 1
        if count == 1:
            raise RuntimeError("a bug, not a reason to exit")
        if count == 3:
            stop.event.set()
        wake.set()
        return Turn(60.0)

    loop = Loop("test", cycle, stop=stop, wake=wake, backoff=Backoff(0.01, 0.01))
    thread = threading.Thread(target=loop.run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert count == 3
