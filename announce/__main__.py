"""``python -m announce`` / ``haroute-announce``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from announce.app import Announcer
from announce.settings import AnnounceSettings
from discovery.daemon import Stopper, load_or_exit, run_main
from discovery.etcd import EtcdSession
from discovery.metrics import Metrics, serve


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_or_exit(AnnounceSettings, argv, os.environ, "haroute-announce")
    stop = Stopper()
    stop.install()
    metrics = Metrics()
    serve(settings.metrics_addr, metrics.registry)
    session = EtcdSession.from_settings(settings)
    return run_main(Announcer(settings, session, metrics, stop).run)


if __name__ == "__main__":
    sys.exit(main())
