"""One lease kept alive by its owner's loop: grant, refresh, re-grant and re-write on loss.

The clients have no background keepalive (SPEC §8), and a background thread would hide
a lost lease from the loop that must rewrite its keys. So the owner calls :meth:`tick`
from its own loop; ``tick`` grants when there is no lease, calls ``write(lease_id)``
after every grant (the owner writes or rewrites its keys there), refreshes every
``interval`` and notices a lease that etcd no longer knows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from discovery.etcd import EtcdSession
from discovery.metrics import Metrics

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(
        self,
        session: EtcdSession,
        ttl: int,
        *,
        interval: float,
        write: Callable[[int], None],
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "lease",
    ) -> None:
        self.session = session
        self.ttl = ttl
        self.interval = interval
        self.write = write
        self.metrics = metrics
        self.clock = clock
        self.name = name
        self.lease_id: int | None = None
        self._lost = False
        self._written = False
        self._next_refresh = 0.0

    def adopt(self, lease_id: int) -> bool:
        """Take over an existing lease (a restarted daemon's own); ``False`` if it is gone."""
        if self.session.keepalive(lease_id) <= 0:
            return False
        self.lease_id = lease_id
        self._written = True
        self._next_refresh = self.clock() + self.interval
        log.info("[lease] %s adopted lease %x", self.name, lease_id)
        return True

    def tick(self) -> float:
        """Do what is due; seconds until the next tick. Raises ``EtcdUnavailable``."""
        now = self.clock()
        if self.lease_id is None:
            self.lease_id, granted = self.session.grant(self.ttl)
            self._written = False
            if self.metrics:
                self.metrics.leases_granted.inc()
                if self._lost:
                    self.metrics.leases_regranted.inc()
            self._lost = False
            log.info("[lease] %s granted lease %x (TTL %d s)", self.name, self.lease_id, granted)
        if not self._written:
            self.write(self.lease_id)
            self._written = True
            self._next_refresh = now + self.interval
            return self.interval
        if now >= self._next_refresh:
            if self.session.keepalive(self.lease_id) <= 0:
                log.warning(
                    "[lease] %s lease %x was lost; granting a new one", self.name, self.lease_id
                )
                if self.metrics:
                    self.metrics.leases_lost.inc()
                self.lease_id = None
                self._lost = True
                return 0.0
            self._next_refresh = now + self.interval
        return max(0.0, self._next_refresh - now)

    def revoke(self) -> None:
        if self.lease_id is not None:
            self.session.revoke(self.lease_id)
            log.info("[lease] %s revoked lease %x", self.name, self.lease_id)
            self.lease_id = None
