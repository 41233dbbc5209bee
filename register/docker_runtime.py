"""``RUNTIME=docker``: which announcements are containers on the local Docker engine, and
the address and port Docker published for them (SPEC §5).

The decisions are pure (:func:`container_from_inspect`, :func:`binding_placement`,
:func:`match`): ``docker inspect`` data in, placements out. :class:`DockerRuntime` is the
edge: it keeps the list of running containers between cycles, refreshed when Docker's
event stream names a container (or reconnects) and at least every ``max_age`` seconds,
and it keeps the last list it saw while the engine is unreachable, so a Docker restart
drops no registration (docs/decisions.md).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import docker.utils

from discovery.backoff import Backoff
from discovery.records import AnnounceRecord
from register.transform import Placement, PlacementUnknown

log = logging.getLogger(__name__)

# What a container event can change about placements: running or not, and (on a restart)
# its published ports. Other events (exec_*, attach, health_status...) are noise.
EVENTS = ("start", "die", "stop", "destroy", "pause", "unpause", "restart")

# A local engine answers list/inspect in milliseconds; a frozen one must not hold the
# register loop (and its lease keepalive) for long.
API_TIMEOUT = 2.0

# Everything a call to an unreachable, restarting or broken engine raises.
DOCKER_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    docker.errors.StreamParseError,  # an event stream cut mid-object
    OSError,  # requests' errors (connection refused, timeouts) are OSErrors
    ValueError,  # a truncated JSON answer
)

WILDCARDS = frozenset({"", "0.0.0.0", "::"})


# --- pure ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """What register needs of one running container's ``docker inspect``."""

    id: str
    hostname: str
    # ``NetworkSettings.Ports``: "8080/tcp" → its host bindings (None: exposed only).
    ports: Mapping[str, Sequence[Mapping[str, str]] | None] = field(default_factory=dict)
    host_network: bool = False

    @property
    def short_id(self) -> str:
        return self.id[:12]


def container_from_inspect(data: Mapping[str, Any]) -> Container | None:
    """A running container from ``docker inspect`` output; None when it is not running."""
    state = data.get("State") or {}
    if not state.get("Running") or state.get("Paused"):
        return None
    config = data.get("Config") or {}
    network = data.get("NetworkSettings") or {}
    host_config = data.get("HostConfig") or {}
    return Container(
        id=str(data.get("Id", "")),
        hostname=str(config.get("Hostname") or ""),
        ports=dict(network.get("Ports") or {}),
        host_network=host_config.get("NetworkMode") == "host",
    )


def _port(raw: object) -> int | None:
    try:
        value = int(str(raw))
    except ValueError:
        return None
    return value if 1 <= value <= 65535 else None


def binding_placement(
    bindings: Sequence[Mapping[str, str]] | None, host_ip: str
) -> Placement | None:
    """Where the world reaches a container port published with ``bindings`` (one value of
    ``NetworkSettings.Ports``). A binding to every address (``0.0.0.0``, ``::``) is
    reached at ``host_ip`` and wins over one to a specific address, which is reached at
    that address. None when the port is not published."""
    specific: Placement | None = None
    for binding in bindings or ():
        port = _port(binding.get("HostPort"))
        if port is None:
            continue
        address = str(binding.get("HostIp") or "")
        if address in WILDCARDS:
            return Placement(ip=host_ip, ext_port=port)
        if specific is None:
            try:
                specific = Placement(ip=str(ipaddress.ip_address(address)), ext_port=port)
            except ValueError:
                continue
    return specific


@dataclass(frozen=True)
class Matched:
    """The placements of local announcements, and the ones that could not be placed."""

    placements: dict[str, Placement]
    # (container id, PORT) of local announcements whose port is not published.
    unpublished: list[tuple[str, int]]
    # IDs that name more than one running container by hostname.
    ambiguous: list[str]


@dataclass(frozen=True)
class Containers:
    """Running containers indexed the way announcements name them."""

    by_id: dict[str, Container]  # full and short id
    by_hostname: dict[str, list[Container]]

    @classmethod
    def of(cls, containers: Iterable[Container]) -> Containers:
        by_id: dict[str, Container] = {}
        by_hostname: dict[str, list[Container]] = {}
        for c in containers:
            by_id[c.id] = by_id[c.short_id] = c
            by_hostname.setdefault(c.hostname, []).append(c)
        return cls(by_id, by_hostname)

    def find(self, instance_id: str) -> Container | None:
        """The container an ``ID`` names: by id, else by hostname if only one has it.
        Raises ``LookupError`` when several running containers have it as hostname."""
        found = self.by_id.get(instance_id)
        if found is not None:
            return found
        named = self.by_hostname.get(instance_id, [])
        if len(named) > 1:
            raise LookupError(instance_id)
        return named[0] if named else None


def place_in(record: AnnounceRecord, container: Container, host_ip: str) -> Placement | None:
    """Where the world reaches ``record``'s ``PORT`` in ``container`` (None: unpublished)."""
    if container.host_network:
        # No NAT: the service listens on the host's own addresses.
        return Placement(ip=host_ip, ext_port=record.port)
    return binding_placement(container.ports.get(f"{record.port}/tcp"), host_ip)


def match(
    announces: Mapping[str, AnnounceRecord], containers: Iterable[Container], host_ip: str
) -> Matched:
    """Announcements whose ``ID`` is a running container's id (full or short) or hostname,
    placed at the host binding of their ``PORT/tcp``. Others are not on this host."""
    index = Containers.of(containers)
    placements: dict[str, Placement] = {}
    unpublished: list[tuple[str, int]] = []
    ambiguous: list[str] = []
    for key, record in announces.items():
        try:
            found = index.find(record.id)
        except LookupError:
            ambiguous.append(record.id)
            continue
        if found is None:
            continue
        place = place_in(record, found, host_ip)
        if place is None:
            unpublished.append((found.id, record.port))
        else:
            placements[key] = place
    return Matched(placements, unpublished, ambiguous)


# --- edge ------------------------------------------------------------------------------


def connector(base_url: str | None, timeout: float = API_TIMEOUT) -> Callable[[], Any]:
    """A function that opens a client to the engine at ``base_url`` (``DOCKER_HOST``), or
    to the one the environment names (``DOCKER_HOST``, else the local unix socket).
    Connecting asks the engine its API version, so it fails while the engine is down."""
    if base_url is not None:
        docker.utils.parse_host(base_url)  # a malformed address fails at start

    def connect() -> Any:
        if base_url is None:
            return docker.from_env(timeout=timeout)
        return docker.DockerClient(base_url=base_url, timeout=timeout)

    return connect


class DockerRuntime:
    """Announcements of containers running on this Docker engine."""

    name = "docker"

    def __init__(
        self,
        connect: Callable[[], Any],
        host_ip: str,
        *,
        max_age: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connect = connect
        self.host_ip = host_ip
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        # Written by the event watcher, read by place(): a counter that says "list
        # again", the containers named by events since the last list, and "forget every
        # inspection" after the stream broke (events may have been missed).
        self._generation = 0
        self._stale_ids: set[str] = set()
        self._stale_all = False
        self._stream: Any = None
        # place()'s own (the register loop's thread).
        self._client: Any = None
        self._containers: list[Container] | None = None  # None: never listed
        self._inspected: dict[str, tuple[str, Container]] = {}  # id → (list's Ports, it)
        self._listed_generation = -1
        self._listed_at = float("-inf")
        self._failed_generation = -1
        self._retry_at = float("-inf")
        self._backoff = Backoff(0.1, 2.0)
        self._unreachable = False
        self._warned: set[tuple[str, int]] = set()
        self._warned_ambiguous: set[str] = set()
        # The containers the placements were last computed from, indexed.
        self._indexed: list[Container] = []
        self._index: Containers | None = None

    # --- placements (the register loop's thread) --------------------------------------

    @property
    def interval(self) -> float | None:
        """The loop turns at least this often: the list is refreshed every ``max_age``."""
        return self.max_age

    def refresh(self) -> bool:
        """List the containers again when an event said so or the list is old; True when
        the running containers changed since the last call."""
        self._maybe_refresh()
        if self._containers is None:
            raise PlacementUnknown("the Docker engine has not answered yet")
        if self._index is not None and self._containers == self._indexed:
            return False
        self._indexed = list(self._containers)
        self._index = Containers.of(self._indexed)
        running = {c.id for c in self._indexed}
        self._warned = {w for w in self._warned if w[0] in running}
        self._warned_ambiguous = {
            i for i in self._warned_ambiguous if len(self._index.by_hostname.get(i, ())) > 1
        }
        return True

    def place(self, key: str, record: AnnounceRecord) -> Placement | None:
        """Where ``record`` runs on this engine, per the last :meth:`refresh`."""
        if self._index is None:
            return None
        try:
            found = self._index.find(record.id)
        except LookupError:
            if record.id not in self._warned_ambiguous:
                self._warned_ambiguous.add(record.id)
                log.warning(
                    "[docker] ID %s is the hostname of several running containers; "
                    "not registered (give them distinct hostnames)",
                    record.id,
                )
            return None
        if found is None:
            return None
        where = place_in(record, found, self.host_ip)
        if where is None and (found.id, record.port) not in self._warned:
            self._warned.add((found.id, record.port))
            log.warning(
                "[docker] container %s does not publish port %d/tcp; its announcement "
                "is not registered until it does",
                found.id[:12],
                record.port,
            )
        return where

    def _maybe_refresh(self) -> None:
        now = self.clock()
        with self._lock:
            generation = self._generation
        if (
            self._containers is not None
            and generation == self._listed_generation
            and now - self._listed_at < self.max_age
        ):
            return  # nothing happened since the last list, and it is recent
        if now < self._retry_at and generation == self._failed_generation:
            return  # the engine failed a moment ago and no reconnect has been seen since
        try:
            containers = self._list()
        except DOCKER_ERRORS as exc:
            self._drop_client()
            self._failed_generation = generation
            self._retry_at = now + self._backoff.next()
            if not self._unreachable:
                self._unreachable = True
                if self._containers is None:
                    kept = "registering nothing and removing nothing"
                else:
                    kept = f"keeping the {len(self._containers)} running container(s) last seen"
                log.warning(
                    "[docker] engine unreachable (%s); %s until it answers again", exc, kept
                )
            return
        if self._unreachable:
            self._unreachable = False
            log.info("[docker] engine reachable again; %d containers running", len(containers))
        self._backoff.reset()
        self._containers = containers
        self._listed_generation = generation
        self._listed_at = now

    def _list(self) -> list[Container]:
        """Running containers, inspecting only those not seen before, named by an event
        since, or whose published ports changed."""
        with self._lock:
            stale_ids, self._stale_ids = self._stale_ids, set()
            stale_all, self._stale_all = self._stale_all, False
        if stale_all:
            self._inspected.clear()
        for container_id in stale_ids:
            self._inspected.pop(container_id, None)
        if self._client is None:
            self._client = self.connect()
        api = self._client.api
        out: list[Container] = []
        seen: set[str] = set()
        for entry in api.containers(filters={"status": "running"}):
            container_id = str(entry.get("Id", ""))
            ports = json.dumps(entry.get("Ports"), sort_keys=True)
            seen.add(container_id)
            cached = self._inspected.get(container_id)
            if cached is None or cached[0] != ports:
                try:
                    container = container_from_inspect(api.inspect_container(container_id))
                except docker.errors.NotFound:
                    continue  # gone between the list and the inspect
                if container is None:
                    continue
                cached = self._inspected[container_id] = (ports, container)
            out.append(cached[1])
        for gone in self._inspected.keys() - seen:
            del self._inspected[gone]
        return out

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(*DOCKER_ERRORS):
                client.close()

    # --- events (a thread of its own) ---------------------------------------------------

    def _invalidate(self, container_id: str | None) -> None:
        with self._lock:
            self._generation += 1
            if container_id is None:
                self._stale_all = True
            else:
                self._stale_ids.add(container_id)

    def watch(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """Wake the register loop whenever a container starts or exits, until ``stop``.

        Docker's event stream is a signal only: an event marks its container stale and
        the loop lists again. When the engine goes away the stream is reopened with
        back-off; every new stream marks the whole list stale, as events may have been
        missed meanwhile."""
        threading.Thread(
            target=self._close_on_stop, args=(stop,), name="docker-events-stop", daemon=True
        ).start()
        backoff = Backoff(0.1, 2.0)
        quiet = False  # a failure was logged: say nothing more until a stream lives again
        while not stop.is_set():
            started = self.clock()
            try:
                reason = self._follow(wake, stop, quiet)
            except DOCKER_ERRORS as exc:
                reason = f"cannot reach the engine ({exc})"
            except Exception:
                log.exception("[docker] [events] unexpected error, please report it as a bug")
                reason = "unexpected error"
            if stop.is_set():
                break
            if self.clock() - started > 10:
                backoff.reset()  # a stream that lived a while: reconnect at once
                quiet = False
            if not quiet:
                quiet = True
                log.warning("[docker] [events] %s; reconnecting with back-off", reason)
            stop.wait(backoff.next())

    def _follow(self, wake: Callable[[], None], stop: threading.Event, quiet: bool) -> str:
        """Follow one event stream until it ends; why it ended."""
        client = self.connect()
        try:
            stream = client.events(
                decode=True, filters={"type": "container", "event": list(EVENTS)}
            )
            with self._lock:
                self._stream = stream
            if stop.is_set():
                return "stopping"
            log.info(
                "[docker] [events] %s container events",
                "engine back; following" if quiet else "following",
            )
            try:
                # Whatever happened before this stream began was not seen: list again.
                self._invalidate(None)
                wake()
                for event in stream:
                    actor = event.get("Actor") or {}
                    self._invalidate(str(event.get("id") or actor.get("ID") or "") or None)
                    wake()
            finally:
                # From here on events can be missed: the next list forgets everything.
                self._invalidate(None)
                wake()
            return "the event stream ended"
        finally:
            with self._lock:
                self._stream = None
            with contextlib.suppress(*DOCKER_ERRORS):
                client.close()

    def _close_on_stop(self, stop: threading.Event) -> None:
        stop.wait()
        with self._lock:
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(*DOCKER_ERRORS):
                stream.close()
