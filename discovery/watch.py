"""A local mirror of one etcd prefix, kept by list-then-watch with resume.

Written by hand because no client does this (SPEC §8): a watch dies with etcd and is
never re-established. The mirror lists the prefix at revision R, watches from R + 1, and
after any break watches again from the last revision it saw + 1, so events that happened
while etcd was restarting are still delivered. When that revision has been compacted it
lists again; when etcd's revision went backwards (restored from a backup, new data
directory) it lists again too. A frozen etcd breaks the watch through gRPC keepalive.

The mirror is a *signal*: consumers read a consistent :class:`Snapshot` and derive their
state from it (STYLE: a watch is a signal; state comes from a snapshot).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from discovery.backoff import Backoff
from discovery.etcd import Compacted, EtcdSession, EtcdUnavailable
from discovery.kv import KV, WatchBatch
from discovery.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Changes:
    """What changed in the mirror since the last :meth:`PrefixMirror.take_changes`: the
    keys (``None``: deleted), or, after a (re)list, every key (``relisted``)."""

    items: Mapping[str, KV | None]
    relisted: bool
    revision: int


@dataclass(frozen=True)
class Snapshot:
    """The mirrored keys (read-only) and the revision they are current to."""

    items: Mapping[str, KV]
    revision: int
    synced: bool


class PrefixMirror:
    """Mirror every key under ``prefix + "/"``. Run :meth:`run` in a thread of its own."""

    def __init__(
        self,
        session: EtcdSession,
        prefix: str,
        *,
        on_change: Callable[[], None],
        metrics: Metrics | None = None,
        backoff: Backoff | None = None,
        track_changes: bool = False,
        on_events: Callable[[WatchBatch | None], None] | None = None,
    ) -> None:
        self.session = session
        self.prefix = prefix.rstrip("/") + "/"
        self.on_change = on_change
        # For consumers that follow the changes instead of re-reading the snapshot: each
        # applied batch, or None after a (re)list (anything may have changed). Called in
        # the mirror's thread, after the change is in the snapshot and before on_change.
        self.on_events = on_events
        self.metrics = metrics
        self.backoff = backoff or Backoff()
        self._lock = threading.Lock()
        self._items: dict[str, KV] = {}
        self._revision = 0
        self._synced = False
        self._connected = False
        # With ``track_changes``, the keys changed since the consumer last looked: a
        # consumer that keeps its own state (the lb) applies only those.
        self._track = track_changes
        self._changes: dict[str, KV | None] = {}
        self._relisted = False

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(MappingProxyType(dict(self._items)), self._revision, self._synced)

    def take_changes(self) -> Changes:
        """The changes since the last call (``track_changes`` only), and forget them."""
        with self._lock:
            if self._relisted:
                items: Mapping[str, KV | None] = dict(self._items)
            else:
                items = self._changes
            changes = Changes(items, self._relisted, self._revision)
            self._changes = {}
            self._relisted = False
        return changes

    @property
    def synced(self) -> bool:
        """Listed at least once (a snapshot before that is empty, not "no keys")."""
        return self._synced

    @property
    def connected(self) -> bool:
        return self._connected

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        if self.metrics:
            self.metrics.etcd_connected.set(1 if value else 0)

    def _list(self) -> None:
        kvs, revision = self.session.get_prefix(self.prefix)
        with self._lock:
            self._items = {kv.key: kv for kv in kvs}
            self._revision = revision
            self._synced = True
            if self._track:
                self._relisted = True
                self._changes = {}
        log.info("[watch] listed %s: %d keys at revision %d", self.prefix, len(kvs), revision)

    def _apply(self, batch: WatchBatch) -> None:
        with self._lock:
            for event in batch.events:
                if event.deleted:
                    self._items.pop(event.kv.key, None)
                else:
                    self._items[event.kv.key] = event.kv
                if self._track and not self._relisted:
                    self._changes[event.kv.key] = None if event.deleted else event.kv
            # The last event's revision, not the header's: a catching-up watch may send
            # the current header revision while more events are still to come.
            self._revision = max(self._revision, batch.revision)
        if self.metrics:
            for event in batch.events:
                self.metrics.watch_events.labels("delete" if event.deleted else "put").inc()

    def run(self, stop: threading.Event) -> None:
        """List, then watch, until ``stop`` is set; never raises for etcd trouble."""
        must_list = True
        while not stop.is_set():
            try:
                if must_list:
                    self._list()
                    must_list = False
                    if self.on_events is not None:
                        self.on_events(None)
                    self.on_change()
                elif self.session.revision(self.prefix) < self._revision:
                    log.warning(
                        "[watch] etcd revision went backwards; listing %s again", self.prefix
                    )
                    must_list = True
                    continue
                self._watch(stop)
            except Compacted as exc:
                log.warning("[watch] %s: %s; listing again", self.prefix, exc)
                if self.metrics:
                    self.metrics.watch_restarts.labels("relist").inc()
                must_list = True
            except EtcdUnavailable as exc:
                if self._connected or not self.backoff.failing:
                    log.warning(
                        "[watch] %s broken (%s); resuming from revision %d",
                        self.prefix,
                        exc,
                        self._revision + 1,
                    )
                self._set_connected(False)
                if self.metrics:
                    self.metrics.etcd_errors.inc()
                    self.metrics.watch_restarts.labels("resume").inc()
                stop.wait(self.backoff.next())

    def _watch(self, stop: threading.Event) -> None:
        inbox: queue.Queue[WatchBatch | Exception] = queue.Queue()
        cancel = self.session.watch_prefix(self.prefix, self._revision + 1, inbox.put)
        try:
            self._set_connected(True)
            if self.backoff.failing:
                log.info(
                    "[watch] %s watching again from revision %d", self.prefix, self._revision + 1
                )
            self.backoff.reset()
            while not stop.is_set():
                try:
                    item = inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                if isinstance(item, Exception):
                    raise item
                if item.events:
                    self._apply(item)
                    if self.on_events is not None:
                        self.on_events(item)
                    self.on_change()
        finally:
            cancel()
