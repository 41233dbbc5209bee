"""``python -m register`` / ``haroute-register``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from discovery.daemon import BACKOFF_MAX, EXIT_BAD_SETTINGS, Stopper, load_or_exit, run_main
from discovery.etcd import EtcdSession
from discovery.health import Health, loop_bound
from discovery.metrics import Metrics, serve
from register.app import Register
from register.runtime import RuntimeUnavailable, make_runtime
from register.settings import RegisterSettings

PROG = "haroute-register"


def healthz_bound(settings: RegisterSettings) -> float:
    """``/healthz``: the loop refreshes its lease every REGISTER_TTL/3, so it waits at
    most that between turns (its back-off, at most BACKOFF_MAX); a turn (a read-back of
    every key, Docker calls) longer than REGISTER_TTL would let its own keys expire: a
    loop slower than that is broken anyway. 30 s by default."""
    return loop_bound(
        longest_wait=max(settings.ttl / 3, BACKOFF_MAX), longest_turn=float(settings.ttl)
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_or_exit(RegisterSettings, argv, os.environ, PROG)
    try:
        runtime = make_runtime(
            settings.runtime,
            node_name=settings.node_name,
            host_ip=settings.host_ip,
            docker_host=settings.docker_host,
        )
    except RuntimeUnavailable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    stop = Stopper()
    stop.install()
    metrics = Metrics()
    health = Health(metrics.heartbeat, healthz_bound(settings))
    serve(settings.metrics_addr, metrics.registry, health)
    session = EtcdSession.from_settings(settings)
    register = Register(settings, session, runtime, metrics, stop)
    health.set_ready(register.readiness)
    return run_main(register.run)


if __name__ == "__main__":
    sys.exit(main())
