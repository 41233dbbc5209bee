"""The etcd v3 session: the one place that imports the etcd client (SPEC §8).

It wraps ``pyetcd`` (python-etcd3's maintained fork) and fixes what the measured facts of
SPEC §8 say every client gets wrong:

- every endpoint is used for failover, and a failed endpoint is retried after
  ``ENDPOINT_RETRY`` seconds instead of pyetcd's 300;
- gRPC keepalive is on, so a frozen etcd breaks a watch instead of hanging it;
- an expired auth token (``invalid auth token``) re-authenticates once and retries;
- every transport failure surfaces as :class:`EtcdUnavailable` (a lease etcd does not
  know as its subclass :class:`LeaseNotFound`) and a compacted watch start as
  :class:`Compacted`, so callers handle two exceptions, not a dozen.

Leases have no background machinery here, and a watch only a thread that reads its
stream: :mod:`discovery.lease` and :mod:`discovery.watch` drive them from the daemons'
own loops. Watches do not use pyetcd's watcher, which loses the end of a stream
(:class:`_Watch` says how).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd import exceptions as etcd_exc
from pyetcd import transactions as etcd_txn
from pyetcd import utils as etcd_utils
from pyetcd.etcdrpc import kv_pb2

from discovery.kv import KV, Event, WatchBatch
from discovery.settings import CommonSettings, Endpoint

log = logging.getLogger(__name__)

T = TypeVar("T")

RPC_TIMEOUT = 3.0
ENDPOINT_RETRY = 1.0
#: A replaying watch (:meth:`EtcdSession.last_change`) is taken as caught up once no event
#: came for REPLAY_QUIET after at least REPLAY_MIN (etcd syncs such a watch every 100 ms).
REPLAY_MIN = 0.25
REPLAY_QUIET = 0.15
# gRPC keepalive: ping every 5 s (etcd's default minimum), give up 2 s later (SPEC §8).
GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC's default 4 MiB receive limit lets a few oversized (hostile) values make a
    # prefix impossible to list or watch, forever; etcd bounds each request itself.
    ("grpc.max_receive_message_length", -1),
]


class EtcdUnavailable(Exception):
    """etcd could not be reached or did not answer in time."""


class LeaseNotFound(EtcdUnavailable):
    """etcd does not know the lease a call named (expired, revoked): grant a new one."""


class Compacted(Exception):
    """A watch asked for a revision that has been compacted away: list again."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted (compact revision {revision})")
        self.revision = revision


WatchCallback = Callable[[WatchBatch | Exception], None]


def _decode(key: bytes) -> str:
    return key.decode("utf-8", errors="surrogateescape")


def _encode(key: str) -> bytes:
    return key.encode("utf-8", errors="surrogateescape")


def _kv(raw: Any) -> KV:
    return KV(
        key=_decode(raw.key),
        value=bytes(raw.value),
        create_revision=int(raw.create_revision),
        mod_revision=int(raw.mod_revision),
        lease=int(raw.lease),
    )


class _LeaseCompare(etcd_txn.BaseCompare):  # type: ignore[misc]
    """``lease(key) == id`` (etcd ≥ 3.3); a missing key compares as lease 0."""

    def build_compare(self, compare: Any) -> None:
        compare.target = etcdrpc.Compare.LEASE
        compare.lease = self.value


def _is_auth_error(exc: BaseException) -> bool:
    if isinstance(exc, grpc.RpcError):
        code = exc.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return True
        return code == grpc.StatusCode.INVALID_ARGUMENT and "auth token" in str(exc.details())
    return False


def _is_transport_error(exc: BaseException) -> bool:
    if isinstance(exc, grpc.RpcError):
        return exc.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.UNKNOWN,
        )
    return isinstance(
        exc,
        (
            etcd_exc.ConnectionFailedError,
            etcd_exc.ConnectionTimeoutError,
            etcd_exc.InternalServerError,
            etcd_exc.NoServerAvailableError,
            etcd_exc.WatchTimedOut,
        ),
    ) or (isinstance(exc, ValueError) and "failed node" in str(exc))


class EtcdSession:
    """A connection to an etcd cluster. Thread-safe enough for one user per thread: give
    each thread that blocks (a watch, a lease loop) its own session via :meth:`fork`."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        username: str | None = None,
        password: str | None = None,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        timeout: float = RPC_TIMEOUT,
    ) -> None:
        self._endpoints = tuple(endpoints)
        self._username = username
        self._password = password
        self._tls = (cacert, cert, key)
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> EtcdSession:
        return cls(
            settings.etcd_endpoints,
            username=settings.etcd_username,
            password=settings.etcd_password,
            cacert=settings.etcd_cacert,
            cert=settings.etcd_cert,
            key=settings.etcd_key,
        )

    def fork(self) -> EtcdSession:
        """A new, independent session with the same settings."""
        cacert, cert, key = self._tls
        return EtcdSession(
            self._endpoints,
            username=self._username,
            password=self._password,
            cacert=cacert,
            cert=cert,
            key=key,
            timeout=self.timeout,
        )

    # --- connection ---------------------------------------------------------------

    def _credentials(self) -> Any:
        cacert, cert, key = self._tls

        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as handle:
                return handle.read()

        return grpc.ssl_channel_credentials(read(cacert), read(key), read(cert))

    def _connect(self) -> Any:
        creds = self._credentials() if any(e.secure for e in self._endpoints) else None
        eps = [
            pyetcd.Endpoint(
                e.host,
                e.port,
                secure=e.secure,
                creds=creds if e.secure else None,
                time_retry=ENDPOINT_RETRY,
                opts=GRPC_OPTIONS,
            )
            for e in self._endpoints
        ]
        # The constructor authenticates (one RPC) when a user is given.
        client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=eps,
            timeout=self.timeout,
            user=self._username,
            password=self._password,
            failover=True,
        )
        # pyetcd sends the token twice: as call credentials and as ``token`` metadata.
        # gRPC refuses call credentials on a plaintext channel ("Established channel does
        # not have a sufficient security level"; pyetcd issue #17), so every call with a
        # user over http failed. The metadata alone carries the token, on http and https.
        client.call_credentials = None
        # etcd's "require leader" (clientv3.WithRequireLeader): a member that lost its
        # leader (partitioned, or the cluster lost quorum) refuses calls at once and cancels
        # watches, instead of timing calls out and feeding a watch that never moves while
        # answering keepalive pings; the daemons then fail over to another endpoint.
        client.metadata = (*(client.metadata or ()), ("hasleader", "true"))
        return client

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._connect()
                except Exception as exc:
                    raise self._translate(exc) from exc
            return self._client

    def _drop_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                log.debug("[etcd] closing client failed", exc_info=True)

    def _translate(self, exc: BaseException) -> Exception:
        """Map a client exception to ours; drop the client when it cannot recover alone."""
        if isinstance(exc, etcd_exc.RevisionCompactedError):
            return Compacted(int(exc.compacted_revision))
        if isinstance(exc, EtcdUnavailable | Compacted):
            return exc
        if _is_auth_error(exc):
            self._drop_client()
            return EtcdUnavailable(f"authentication: {exc}")
        if _is_transport_error(exc):
            return EtcdUnavailable(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, grpc.RpcError):
            # e.g. PERMISSION_DENIED: not a transport problem, but the daemons treat every
            # etcd error as "etcd is not usable now" and back off; the message says why.
            # etcd names an unknown lease only in its message (NOT_FOUND is its code).
            unknown = "lease not found" in str(exc.details())
            kind = LeaseNotFound if unknown else EtcdUnavailable
            return kind(f"{exc.code().name}: {exc.details()}")
        return exc if isinstance(exc, Exception) else Exception(str(exc))

    def _call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)``; re-authenticate once on an expired token."""
        for attempt in (1, 2):
            client = self._get_client()
            try:
                return fn(client)
            except Exception as exc:
                if attempt == 1 and _is_auth_error(exc) and self._username is not None:
                    log.info("[etcd] auth token rejected, authenticating again")
                    self._drop_client()
                    continue
                raise self._translate(exc) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._drop_client()

    # --- key-value -----------------------------------------------------------------

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under ``prefix`` and the store revision they were read at."""

        def run(client: Any) -> tuple[list[KV], int]:
            resp = client.get_prefix_response(_encode(prefix))
            return [_kv(kv) for kv in resp.kvs], int(resp.header.revision)

        return self._call(run)

    def get(self, key: str) -> KV | None:
        def run(client: Any) -> KV | None:
            resp = client.get_response(_encode(key))
            return _kv(resp.kvs[0]) if resp.kvs else None

        return self._call(run)

    def revision(self, prefix: str | None = None) -> int:
        """The current store revision (a one-key read). Give the ``prefix`` the caller
        works in: a least-privilege user (SPEC §9) may read nothing outside it."""

        def run(client: Any) -> int:
            if prefix is None:
                resp = client.get_response(b"\0", keys_only=True)
            else:
                resp = client.get_prefix_response(_encode(prefix), keys_only=True, limit=1)
            return int(resp.header.revision)

        return self._call(run)

    def latest_change(self, prefix: str) -> tuple[int, int]:
        """The highest mod revision of a key under ``prefix`` (0: none), and the store
        revision: how far a watcher of the prefix must have come (deletes leave no key,
        so a missed delete shows only with the next put)."""

        def run(client: Any) -> tuple[int, int]:
            resp = client.get_prefix_response(
                _encode(prefix), keys_only=True, limit=1, sort_order="descend", sort_target="mod"
            )
            latest = int(resp.kvs[0].mod_revision) if resp.kvs else 0
            return latest, int(resp.header.revision)

        return self._call(run)

    def last_change(self, prefix: str) -> tuple[int, int]:
        """The revision of the last put *or delete* under ``prefix`` (0: none), and the
        store revision. A delete leaves no key to read, so the revisions after the latest
        mod revision are replayed by a watch (:meth:`watch_prefix`). etcd 3.4 sends such a
        replay from its watch sync, every 100 ms, and answers a progress request at once
        whether the watch has caught up or not (measured), so the replay is taken as
        complete once no event came for :data:`REPLAY_QUIET` after at least
        :data:`REPLAY_MIN` (and at the latest after the RPC timeout). When that history is
        compacted, or the watch fails, what the keys say."""
        latest, revision = self.latest_change(prefix)
        if latest >= revision:
            return latest, revision
        answers: queue.Queue[WatchBatch | Exception] = queue.Queue()
        try:
            cancel = self.watch_prefix(prefix, latest + 1, answers.put)
        except (Compacted, EtcdUnavailable):
            return latest, revision
        last = latest
        started = quiet_since = time.monotonic()
        try:
            while (now := time.monotonic()) - started < self.timeout and (
                now - started < REPLAY_MIN or now - quiet_since < REPLAY_QUIET
            ):
                try:
                    answer = answers.get(timeout=0.01)
                except queue.Empty:
                    continue
                if isinstance(answer, Compacted):
                    return latest, revision
                if isinstance(answer, Exception):
                    break
                last = max(last, answer.revision)
                quiet_since = time.monotonic()
            return last, revision
        finally:
            cancel()

    def put(self, key: str, value: str | bytes, *, lease: int = 0) -> None:
        self._call(lambda client: client.put(_encode(key), value, lease=lease or None))

    def create(self, key: str, value: str | bytes, *, lease: int) -> bool:
        """Put ``key`` only if it does not exist; ``False`` if it does."""

        def run(client: Any) -> bool:
            ok, _ = client.transaction(
                compare=[etcd_txn.Version(_encode(key)) == 0],
                success=[etcd_txn.Put(_encode(key), value, lease=lease or None)],
                failure=[],
            )
            return bool(ok)

        return self._call(run)

    def put_if_lease(self, key: str, value: str | bytes, *, expect_lease: int, lease: int) -> bool:
        """Put ``key`` under ``lease`` only if it is now held by ``expect_lease`` (0: absent)."""

        def run(client: Any) -> bool:
            compare = _LeaseCompare(_encode(key)) == expect_lease
            ok, _ = client.transaction(
                compare=[compare],
                success=[etcd_txn.Put(_encode(key), value, lease=lease or None)],
                failure=[],
            )
            return bool(ok)

        return self._call(run)

    def put_if_mod(self, key: str, value: str | bytes, *, expect_mod: int) -> bool:
        """Put ``key`` only if its mod revision is still ``expect_mod`` (0: it does not
        exist): a read-modify-write that never overwrites a change made in between."""

        def run(client: Any) -> bool:
            ok, _ = client.transaction(
                compare=[etcd_txn.Mod(_encode(key)) == expect_mod],
                success=[etcd_txn.Put(_encode(key), value)],
                failure=[],
            )
            return bool(ok)

        return self._call(run)

    def delete_if_mod(self, key: str, *, expect_mod: int) -> bool:
        """Delete ``key`` only if its mod revision is still ``expect_mod``."""

        def run(client: Any) -> bool:
            ok, _ = client.transaction(
                compare=[etcd_txn.Mod(_encode(key)) == expect_mod],
                success=[etcd_txn.Delete(_encode(key))],
                failure=[],
            )
            return bool(ok)

        return self._call(run)

    def delete_if_lease(self, key: str, *, expect_lease: int) -> bool:
        """Delete ``key`` only if it is held by ``expect_lease``."""

        def run(client: Any) -> bool:
            compare = _LeaseCompare(_encode(key)) == expect_lease
            ok, _ = client.transaction(
                compare=[compare, etcd_txn.Version(_encode(key)) > 0],
                success=[etcd_txn.Delete(_encode(key))],
                failure=[],
            )
            return bool(ok)

        return self._call(run)

    def put_many(self, items: Sequence[tuple[str, str | bytes]], *, lease: int = 0) -> None:
        """Put many keys, 100 per transaction (etcd's ``--max-txn-ops`` is 128): how a
        benchmark or a test writes a large cluster's records in seconds."""
        for start in range(0, len(items), 100):
            ops = [
                etcd_txn.Put(_encode(key), value, lease=lease or None)
                for key, value in items[start : start + 100]
            ]

            def run(client: Any, ops: list[Any] = ops) -> None:
                client.transaction(compare=[], success=ops, failure=[])

            self._call(run)

    def delete(self, key: str) -> None:
        self._call(lambda client: client.delete(_encode(key)))

    def compact(self, revision: int) -> None:
        self._call(lambda client: client.compact(revision, physical=True))

    # --- leases -------------------------------------------------------------------

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: its id and the TTL etcd granted (etcd may raise small TTLs)."""

        def run(client: Any) -> tuple[int, int]:
            lease = client.lease(ttl)
            return int(lease.id), int(lease.ttl)

        return self._call(run)

    def keepalive(self, lease_id: int) -> int:
        """Refresh a lease; its new TTL, or 0 when the lease no longer exists."""

        def run(client: Any) -> int:
            ttl = 0
            for resp in client.refresh_lease(lease_id):
                ttl = int(resp.TTL)
            return ttl

        return self._call(run)

    def time_to_live(self, lease_id: int) -> int:
        """Seconds left on a lease; -1 when it does not exist."""
        return self._call(lambda client: int(client.get_lease_info(lease_id).TTL))

    def revoke(self, lease_id: int) -> None:
        """Revoke a lease (its keys go at once). A lease that is already gone is fine."""
        with contextlib.suppress(LeaseNotFound):
            self._call(lambda client: client.revoke_lease(lease_id))

    # --- watch --------------------------------------------------------------------

    def watch_prefix(
        self, prefix: str, start_revision: int, callback: WatchCallback
    ) -> Callable[[], None]:
        """Watch ``prefix`` from ``start_revision``; ``callback`` gets batches, and at most
        one exception after which the watch is dead. Returns a cancel function. Raises
        :class:`Compacted` when ``start_revision`` is gone."""

        def run(client: Any) -> _Watch:
            # A one-key read of the same range first: it re-authenticates an expired token
            # (a watch stream cannot) and fails with etcd's reason when the range is not
            # ours to read, before a stream is opened for it.
            client.get_prefix_response(_encode(prefix), keys_only=True, limit=1)
            return _Watch.start(
                client,
                _encode(prefix),
                start_revision,
                callback,
                timeout=self.timeout,
                translate=self._translate,
            )

        return self._call(run).cancel


class _Watch:
    """One etcd watch on a gRPC stream of its own.

    Written by hand over the generated stub because pyetcd's ``Watcher`` (0.0.7) loses
    what a watch must report (tried against etcd 3.4 through ``tests/faultproxy.py``,
    issue 8): when a stream ends cleanly it hands ``None`` to the callback, ours then
    fails inside pyetcd, which logs and swallows that, and the watch is dead while it
    looks alive; and it drops cancel replies that carry no events, so a watch that etcd
    refuses at its creation (permission denied) looks created and never says a word.
    Here every end of a watch but :meth:`cancel` reaches the callback as one exception,
    and a refusal, a compacted start or no answer at all is raised by :meth:`start`.
    """

    def __init__(self, callback: WatchCallback, translate: Callable[[BaseException], Exception]):
        self._callback = callback
        self._translate = translate
        self._lock = threading.Lock()
        self._cancelled = False
        self._created = threading.Event()
        self._start_error: Exception | None = None
        self._half_close = threading.Event()
        self._call: Any = None

    @classmethod
    def start(
        cls,
        client: Any,
        prefix: bytes,
        start_revision: int,
        callback: WatchCallback,
        *,
        timeout: float,
        translate: Callable[[BaseException], Exception],
    ) -> _Watch:
        """Open the stream and wait for etcd to confirm the watch (or refuse it)."""
        watch = cls(callback, translate)
        create = etcdrpc.WatchRequest(
            create_request=etcdrpc.WatchCreateRequest(
                key=prefix,
                range_end=etcd_utils.prefix_range_end(prefix),
                start_revision=start_revision,
            )
        )
        stub = etcdrpc.WatchStub(client.channel)
        watch._call = stub.Watch(watch._requests(create), metadata=client.metadata)
        threading.Thread(target=watch._run, name="etcd-watch", daemon=True).start()
        if not watch._created.wait(timeout):
            watch.cancel()
            raise EtcdUnavailable(f"etcd did not confirm a watch within {timeout} s")
        if watch._start_error is not None:
            raise watch._start_error
        return watch

    def cancel(self) -> None:
        """End the watch; the callback hears nothing more."""
        with self._lock:
            self._cancelled = True
        self._half_close.set()
        self._call.cancel()

    def _requests(self, create: Any) -> Any:
        yield create
        # Keep our half of the stream open until the watch ends (etcd takes a half-close
        # for "no more requests", not for "stop"); this also frees gRPC's sending thread.
        self._half_close.wait()

    def _run(self) -> None:
        error: Exception
        try:
            for resp in self._call:
                ended = self._on_response(resp)
                if ended is not None:
                    error = ended
                    break
            else:
                error = EtcdUnavailable("the watch stream ended without an error status")
        except grpc.RpcError as exc:
            error = self._translate(exc)
        except Exception as exc:
            log.exception("[watch] unexpected error, please report it as a bug")
            error = exc
        finally:
            self._half_close.set()
        self._call.cancel()  # a cancel reply leaves the stream open: close it
        with self._lock:
            if self._cancelled:
                return
        if not self._created.is_set():
            self._start_error = error
            self._created.set()
        else:
            self._deliver(error)

    def _on_response(self, resp: Any) -> Exception | None:
        """Handle one response; the exception that ends the watch, if it does."""
        if resp.compact_revision:
            return Compacted(int(resp.compact_revision))
        if resp.canceled:
            reason = resp.cancel_reason or "no reason given"
            return EtcdUnavailable(f"etcd cancelled the watch: {reason}")
        if resp.created and not self._created.is_set():
            self._created.set()
        if resp.events:
            events = tuple(
                Event(kv=_kv(ev.kv), deleted=ev.type == kv_pb2.Event.DELETE) for ev in resp.events
            )
            last = max(e.kv.mod_revision for e in events)
            self._deliver(WatchBatch(events=events, revision=last))
        return None

    def _deliver(self, item: WatchBatch | Exception) -> None:
        with self._lock:
            if self._cancelled:
                return
        try:
            self._callback(item)
        except Exception:
            log.exception("[watch] the watch callback failed, please report it as a bug")
