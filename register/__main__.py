"""``python -m register`` / ``haroute-register``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from discovery.daemon import EXIT_BAD_SETTINGS, Stopper, load_or_exit, run_main
from discovery.etcd import EtcdSession
from discovery.metrics import Metrics, serve
from register.app import Register
from register.runtime import RuntimeUnavailable, make_runtime
from register.settings import RegisterSettings

PROG = "haroute-register"


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
    serve(settings.metrics_addr, metrics.registry)
    session = EtcdSession.from_settings(settings)
    return run_main(Register(settings, session, runtime, metrics, stop).run)


if __name__ == "__main__":
    sys.exit(main())
