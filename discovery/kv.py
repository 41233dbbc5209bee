"""Plain values read from etcd, shared by the pure code and the etcd session. No I/O."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KV:
    """One key as read from etcd. ``key`` is decoded with ``surrogateescape`` so that a
    key that is not UTF-8 still has a name, and fails validation later."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Event:
    """One watch event."""

    kv: KV
    deleted: bool


@dataclass(frozen=True)
class WatchBatch:
    """The events of one watch response; ``revision`` is the last event's."""

    events: tuple[Event, ...]
    revision: int
