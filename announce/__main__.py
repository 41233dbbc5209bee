"""``python -m announce`` / ``haroute-announce``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from announce.app import BACKOFF_MAX, EXPIRY_MARGIN, Announcer
from announce.settings import AnnounceSettings
from discovery.daemon import Stopper, load_or_exit, run_main
from discovery.etcd import RPC_TIMEOUT, EtcdSession
from discovery.health import Health, loop_bound
from discovery.metrics import Metrics, serve


def healthz_bound(settings: AnnounceSettings) -> float:
    """``/healthz``: the loop waits at most ANNOUNCE_INTERVAL between turns (its back-off
    while etcd is down, at most BACKOFF_MAX); one turn may wait out a dead holder's lease
    (up to ANNOUNCE_TTL + EXPIRY_MARGIN) between two etcd calls. 38 s by default."""
    return loop_bound(
        longest_wait=max(settings.interval, BACKOFF_MAX),
        longest_turn=settings.ttl + EXPIRY_MARGIN + 2 * RPC_TIMEOUT,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_or_exit(AnnounceSettings, argv, os.environ, "haroute-announce")
    stop = Stopper()
    stop.install()
    metrics = Metrics()
    health = Health(metrics.heartbeat, healthz_bound(settings))
    serve(settings.metrics_addr, metrics.registry, health)
    session = EtcdSession.from_settings(settings)
    announcer = Announcer(settings, session, metrics, stop)
    health.set_ready(announcer.readiness)
    return run_main(announcer.run)


if __name__ == "__main__":
    sys.exit(main())
