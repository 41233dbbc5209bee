"""One lease kept alive by its owner's loop: grant, refresh, re-grant and re-write on loss.

The clients have no background keepalive (SPEC §8), and a background thread would hide
a lost lease from the loop that must rewrite its keys. So the owner calls :meth:`tick`
from its own loop; ``tick`` grants when there is no lease, calls ``write(lease_id)``
after every grant (the owner writes or rewrites its keys there), refreshes every
``interval`` and notices a lease that etcd no longer knows.

A ``write`` that fails is tried again on the next tick, and the lease is refreshed on
time meanwhile: a write can fail after it committed (its reply lost), so giving up the
lease would take the committed keys with it. Before each retry the lease is refreshed,
which also tells whether etcd still knows it; a lease it no longer knows (a refresh
answers 0, or the write says so) is replaced by a new one, written again. So any failure
after a grant ends in written keys under a live lease once etcd answers again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from discovery.etcd import EtcdSession, EtcdUnavailable, LeaseNotFound
from discovery.metrics import Metrics

log = logging.getLogger(__name__)

# Revoking on exit: a few attempts within a few seconds (Docker sends SIGKILL after 10).
REVOKE_ATTEMPTS = 3
REVOKE_WITHIN = 4.0


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
        sleep: Callable[[float], None] = time.sleep,
        name: str = "lease",
    ) -> None:
        self.session = session
        self.ttl = ttl
        self.interval = interval
        self.write = write
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        self.name = name
        self.lease_id: int | None = None
        #: What the last :meth:`tick` did, one sentence ("" when it only waited).
        self.did = ""
        self._lost = False
        self._written = False
        self._next_refresh = 0.0

    @property
    def written(self) -> bool:
        """A lease is held and ``write`` has succeeded under it."""
        return self.lease_id is not None and self._written

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
        """Do what is due; seconds until the next tick. Raises ``EtcdUnavailable``, or
        what ``write`` raises (the write is then tried again on the next tick)."""
        now = self.clock()
        self.did = ""
        if self.lease_id is not None and now >= self._next_refresh:
            self._refresh(now)
        if self.lease_id is None:
            self._grant(now)
        if not self._written:
            self._write(now)
        return max(0.0, self._next_refresh - now)

    def _refresh(self, now: float) -> None:
        assert self.lease_id is not None
        if self.session.keepalive(self.lease_id) > 0:
            self._next_refresh = now + self.interval
        else:
            self._lose("was lost")

    def _grant(self, now: float) -> None:
        self.lease_id, granted = self.session.grant(self.ttl)
        self._written = False
        self._next_refresh = now + self.interval
        if self.metrics:
            self.metrics.leases_granted.inc()
            if self._lost:
                self.metrics.leases_regranted.inc()
        self._lost = False
        log.info("[lease] %s granted lease %x (TTL %d s)", self.name, self.lease_id, granted)
        self.did = f"granted lease {self.lease_id:x}"

    def _write(self, now: float) -> None:
        assert self.lease_id is not None
        try:
            self.write(self.lease_id)
        except LeaseNotFound:
            self._lose("is unknown to etcd")
            raise
        except BaseException:
            # Not known to be written, maybe committed: keep the lease, and refresh it
            # before the next attempt (which also tells whether etcd still knows it).
            self._next_refresh = now
            raise
        self._written = True
        self.did = " and ".join(filter(None, (self.did, f"wrote under lease {self.lease_id:x}")))

    def _lose(self, why: str) -> None:
        log.warning("[lease] %s lease %x %s; granting a new one", self.name, self.lease_id, why)
        if self.metrics:
            self.metrics.leases_lost.inc()
        self.lease_id = None
        self._written = False
        self._lost = True

    def revoke(self) -> None:
        """Revoke the lease, so its keys go at once (a daemon stopping). A call that fails
        is tried again, briefly: pyetcd fails over after a failed call, so the next
        attempt reaches another endpoint when the one in use just went down. Raises
        ``EtcdUnavailable`` when every attempt failed (the keys then live out their TTL)."""
        if self.lease_id is None:
            return
        retrying = Retrying(
            retry=retry_if_exception_type(EtcdUnavailable),
            stop=stop_after_attempt(REVOKE_ATTEMPTS) | stop_after_delay(REVOKE_WITHIN),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            sleep=self.sleep,
            reraise=True,
        )
        retrying(self.session.revoke, self.lease_id)
        log.info("[lease] %s revoked lease %x", self.name, self.lease_id)
        self.lease_id = None
        self._written = False
