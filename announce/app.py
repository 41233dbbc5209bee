"""announce: keep one service record alive under its own lease (SPEC §4)."""

from __future__ import annotations

import logging
import time

from prometheus_client import Gauge

from announce.settings import AnnounceSettings
from discovery.backoff import Backoff
from discovery.daemon import Exit, Stopper, Turn, run_loop
from discovery.etcd import EtcdSession, EtcdUnavailable
from discovery.kv import KV
from discovery.lease import LeaseKeeper
from discovery.metrics import Metrics
from discovery.records import AnnounceRecord

log = logging.getLogger(__name__)

POLL = 0.25
EXPIRY_MARGIN = 2.0
BACKOFF_MAX = 5.0  # the loop's longest wait while etcd is unavailable


class HeldElsewhere(Exception):
    """The record's key is held by another live process (or by a key without lease)."""


class Announcer:
    def __init__(
        self, settings: AnnounceSettings, session: EtcdSession, metrics: Metrics, stop: Stopper
    ) -> None:
        self.settings = settings
        self.session = session
        self.metrics = metrics
        self.stop = stop
        self.record = AnnounceRecord(
            path=settings.path,
            id=settings.instance_id,
            port=settings.port,
            type=settings.service_type,
            host=settings.host,
        )
        self.key = settings.layout.announce_key(settings.path, self.record.id)
        self.value = self.record.to_json()
        self.announced = Gauge(
            "haroute_announced", "1 while this announce holds its record", registry=metrics.registry
        )
        self.lease = LeaseKeeper(
            session,
            settings.ttl,
            interval=settings.interval,
            write=self._claim,
            metrics=metrics,
            name="announce",
        )

    def _claim(self, lease_id: int) -> None:
        """Create the record under ``lease_id`` if the key is free (one transaction)."""
        while not self.stop.is_set():
            if self.session.create(self.key, self.value, lease=lease_id):
                log.info("[announce] %s = %s", self.key, self.value, extra={"key": self.key})
                return
            holder = self.session.get(self.key)
            if holder is None:
                continue  # gone between the two calls: create again
            if holder.lease == lease_id:
                # Ours: an earlier create committed but its reply was lost.
                log.info("[announce] %s is already held by our lease %x", self.key, lease_id)
                return
            self._wait_for_holder(holder, lease_id)

    def _wait_for_holder(self, holder: KV, own_lease: int) -> None:
        """Return once a dead holder's key is gone; raise if the holder is alive.

        A dead holder's key expires within the remaining TTL of its lease (etcd checks
        expiry every 0.5 s); a live holder keeps it longer than that, and its remaining
        TTL is seen to rise when it refreshes. This lets a container that restarts within
        the TTL of its crashed predecessor take its key over, while two live processes
        with one ID never overwrite each other (SPEC §4).
        """
        if holder.lease == 0:
            raise HeldElsewhere(f"{self.key} exists without a lease (written by hand?)")
        lowest = self.session.time_to_live(holder.lease)
        log.info(
            "[announce] %s is held by lease %x (%d s left); waiting to see if its holder is alive",
            self.key,
            holder.lease,
            lowest,
        )
        deadline = time.monotonic() + max(lowest, 0) + EXPIRY_MARGIN
        refreshed_own = time.monotonic()
        while not self.stop.wait(POLL):
            current = self.session.get(self.key)
            if current is None:
                return
            if current.lease != holder.lease:
                raise HeldElsewhere(f"{self.key} was taken by lease {current.lease:x}")
            ttl = self.session.time_to_live(holder.lease)
            if ttl > lowest or time.monotonic() > deadline:
                raise HeldElsewhere(f"{self.key} is kept alive by lease {holder.lease:x}")
            lowest = min(lowest, ttl)
            if time.monotonic() - refreshed_own >= self.settings.interval:
                self.session.keepalive(own_lease)
                refreshed_own = time.monotonic()

    def cycle(self) -> Turn:
        """One turn (SPEC §4): grant, write and refresh as due. Raises ``Exit(1)`` when
        the record's key is held by another live process."""
        try:
            delay = self.lease.tick()
        except HeldElsewhere as exc:
            raise Exit(1, f"ANNOUNCE_ID {self.record.id!r} is already announced: {exc}") from exc
        finally:
            self.announced.set(1 if self.lease.written else 0)
        self.metrics.etcd_connected.set(1)
        return Turn(delay, self.lease.did)

    def readiness(self) -> tuple[bool, str]:
        """``/readyz``: the record is written under a live lease (live as of the last
        refresh: a refresh that fails fails the turn, which ``/readyz`` reports first)."""
        lease = self.lease.lease_id
        if lease is None or not self.lease.written:
            return False, f"{self.key} is not written under a live lease yet"
        return True, f"{self.key} is written under lease {lease:x}"

    def run(self) -> int:
        status = 0
        try:
            run_loop(
                "announce",
                self.cycle,
                stop=self.stop,
                metrics=self.metrics,
                backoff=Backoff(0.1, BACKOFF_MAX),
                on_etcd_error=lambda _: self.metrics.etcd_connected.set(0),
            )
        except Exit as exc:
            log.error("[announce] %s", exc)
            status = exc.status
        self._revoke()
        self.announced.set(0)
        return status

    def _revoke(self) -> None:
        try:
            self.lease.revoke()
        except EtcdUnavailable as exc:
            log.warning("[announce] could not revoke the lease (%s); it expires by itself", exc)
