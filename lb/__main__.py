"""``python -m lb`` / ``haroute-lb``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from discovery.daemon import BACKOFF_MAX, Stopper, load_or_exit, run_main
from discovery.etcd import EtcdSession
from discovery.health import Health, loop_bound
from discovery.metrics import serve
from lb.controller import ALIVE_EVERY, FIRST_SYNC_WAIT, Controller
from lb.metrics import LbMetrics
from lb.owners import make_process
from lb.settings import LbSettings

# The longest turns: a cold start waits FIRST_SYNC_WAIT for etcd, checks the config
# (`haproxy -c`, at most 60 s: lb/install.py) and starts HAProxy (at most 30 s:
# lb/spawn.py); a reload turn checks (60 s) and reloads (at most 10 s).
CHECK_TIMEOUT = 60.0
START_TIMEOUT = 30.0
LONGEST_TURN = FIRST_SYNC_WAIT + CHECK_TIMEOUT + START_TIMEOUT


def healthz_bound() -> float:
    """``/healthz``: the loop looks at HAProxy every ALIVE_EVERY (1 s), so it waits at
    most that between turns (its back-off, at most BACKOFF_MAX); its longest turn is
    LONGEST_TURN. 107 s."""
    return loop_bound(longest_wait=max(ALIVE_EVERY, BACKOFF_MAX), longest_turn=LONGEST_TURN)


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_or_exit(LbSettings, argv, os.environ, "haroute-lb")
    stop = Stopper()
    stop.install()
    metrics = LbMetrics()
    health = Health(metrics.heartbeat, healthz_bound())
    serve(settings.metrics_addr, metrics.registry, health)
    haproxy = make_process(settings)
    session = EtcdSession.from_settings(settings)
    controller = Controller(settings, session, haproxy, metrics, stop)
    health.set_ready(controller.readiness)
    return run_main(controller.run)


if __name__ == "__main__":
    sys.exit(main())
