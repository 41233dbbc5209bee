"""EtcdSession's compare-and-write and its "last change under a prefix", against a real
etcd 3.4 (what `haroute config`/pins and `haroute status --frontends` rely on)."""

from __future__ import annotations

import time

from tests.helpers import session
from tests.servers import Etcd


def test_put_and_delete_if_mod_write_only_over_what_was_read(etcd: Etcd) -> None:
    """A put or delete that names the mod revision it read is refused once the key has
    changed since; 0 stands for a key that does not exist."""
    s = session(etcd)
    assert s.put_if_mod("/k", "a", expect_mod=0)
    read = s.get("/k")
    assert read is not None
    assert not s.put_if_mod("/k", "b", expect_mod=0)  # it exists now
    s.put("/k", "changed meanwhile")
    assert not s.put_if_mod("/k", "b", expect_mod=read.mod_revision)
    assert not s.delete_if_mod("/k", expect_mod=read.mod_revision)
    again = s.get("/k")
    assert again is not None and again.value == b"changed meanwhile"
    assert s.put_if_mod("/k", "b", expect_mod=again.mod_revision)
    latest = s.get("/k")
    assert latest is not None and latest.value == b"b"
    assert s.delete_if_mod("/k", expect_mod=latest.mod_revision)
    assert s.get("/k") is None
    s.close()


def test_last_change_counts_deletes_and_only_under_the_prefix(etcd: Etcd) -> None:
    """The revision of the last put or delete under the prefix: a delete (no key left to
    show it) and a key put then deleted count; writes elsewhere do not."""
    s = session(etcd)
    for name in ("a", "b", "c"):
        s.put(f"/p/{name}", "v")
    put_c = s.revision()
    s.put("/q/x", "v")
    assert s.last_change("/p/") == (put_c, s.revision())
    s.delete("/p/b")
    deleted = s.revision()
    s.put("/q/y", "v")
    assert s.last_change("/p/") == (deleted, s.revision())
    s.put("/p/new", "v")
    s.delete("/p/new")
    gone = s.revision()
    s.put("/q/z", "v")
    assert s.last_change("/p/") == (gone, s.revision())
    assert s.last_change("/none/") == (0, s.revision())
    s.close()


def test_last_change_falls_back_to_the_keys_when_history_is_compacted(etcd: Etcd) -> None:
    """With the deletes' history compacted away, the keys' own latest revision, at once
    (not after a timeout)."""
    s = session(etcd)
    s.put("/p/a", "v")
    put_a = s.revision()
    s.put("/p/b", "v")
    s.delete("/p/b")
    s.put("/q/x", "v")
    s.compact(s.revision())
    started = time.monotonic()
    assert s.last_change("/p/") == (put_a, s.revision())
    assert time.monotonic() - started < s.timeout
    s.close()
