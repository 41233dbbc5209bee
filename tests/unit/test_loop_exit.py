"""A daemon ends on purpose through its loop (discovery.daemon.Exit), never as a bug."""

from __future__ import annotations

import pytest

from discovery.daemon import Exit, Stopper, Turn, run_loop
from discovery.metrics import Metrics


def test_exit_from_a_cycle_ends_the_loop_with_its_status() -> None:
    """A cycle raising Exit ends run_loop at once with its status: not retried, not a bug."""
    metrics = Metrics()
    calls = 0

    def cycle() -> Turn:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Exit(1, "ANNOUNCE_ID 'web1' is already announced")
        return Turn(0.0, "granted")

    with pytest.raises(Exit) as exited:
        run_loop("test", cycle, stop=Stopper(), metrics=metrics)
    assert exited.value.status == 1
    assert str(exited.value) == "ANNOUNCE_ID 'web1' is already announced"
    assert calls == 2
    assert metrics.registry.get_sample_value("haroute_loop_errors_total") == 0
