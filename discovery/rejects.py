"""Count and log each rejected record once per key and revision (SPEC §3)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from discovery.metrics import Metrics
from discovery.records import InvalidRecord

log = logging.getLogger(__name__)


class RejectLog:
    """Daemons re-derive state from a snapshot on every change, so the same bad record is
    seen many times; it is counted and logged only when its key or revision is new."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.metrics = metrics
        self._seen: dict[str, int] = {}

    def reject(self, key: str, mod_revision: int, exc: InvalidRecord) -> None:
        if self._seen.get(key) == mod_revision:
            return
        self._seen[key] = mod_revision
        if self.metrics:
            self.metrics.invalid_records.labels(exc.reason.value).inc()
        log.warning(
            "[record] rejected %r (revision %d): %s",
            key[:200],
            mod_revision,
            exc,
            extra={"key": key[:200], "reason": exc.reason.value},
        )

    def forget(self, key: str) -> None:
        """A key that is gone: its next bad value is news again."""
        self._seen.pop(key, None)

    def forget_missing(self, present: Iterable[str]) -> None:
        """Drop keys that no longer exist, so the memory stays bounded."""
        keep = set(present)
        for key in [k for k in self._seen if k not in keep]:
            del self._seen[key]
