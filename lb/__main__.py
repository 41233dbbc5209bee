"""``python -m lb`` / ``haroute-lb``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from discovery.daemon import Stopper, load_or_exit, run_main
from discovery.etcd import EtcdSession
from discovery.metrics import serve
from lb.controller import Controller
from lb.metrics import LbMetrics
from lb.owners import make_process
from lb.settings import LbSettings


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_or_exit(LbSettings, argv, os.environ, "haroute-lb")
    stop = Stopper()
    stop.install()
    metrics = LbMetrics()
    serve(settings.metrics_addr, metrics.registry)
    haproxy = make_process(settings)
    session = EtcdSession.from_settings(settings)
    return run_main(Controller(settings, session, haproxy, metrics, stop).run)


if __name__ == "__main__":
    sys.exit(main())
