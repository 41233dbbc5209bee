"""What every daemon's ``main`` shares: signals that only set a flag, the exit paths, and
the one loop all three daemons turn (:func:`run_loop`)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TypeVar

from discovery import logs
from discovery.backoff import Backoff
from discovery.etcd import EtcdUnavailable
from discovery.metrics import Metrics
from discovery.settings import CommonSettings, SettingError, load

log = logging.getLogger(__name__)

S = TypeVar("S", bound=CommonSettings)

EXIT_BAD_SETTINGS = 2
# The loop's longest back-off after failed cycles, unless its daemon gives its own.
BACKOFF_MAX = 2.0


class Stopper:
    """SIGTERM/SIGINT set :attr:`event`; a second signal exits at once (patroni's habit)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None
        self._linked: list[threading.Event] = []

    def link(self, event: threading.Event) -> None:
        """Set ``event`` too on stop, to wake a loop that waits on it."""
        self._linked.append(event)

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            os._exit(1)
        self.signal = signum
        self.event.set()
        for event in self._linked:
            event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, seconds: float) -> bool:
        return self.event.wait(max(0.0, seconds))


def load_or_exit(
    cls: type[S], argv: Sequence[str] | None, environ: Mapping[str, str], prog: str
) -> S:
    """Settings, or one line naming the bad setting and exit 2 (SPEC §2)."""
    try:
        settings = load(cls, argv, environ, prog)
    except SettingError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    logs.setup(settings.log_level, settings.log_format, prog)
    return settings


def run_main(body: Callable[[], int]) -> int:
    """Run a daemon body; an unexpected exception is logged as a bug, not a bare trace."""
    try:
        return body()
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("unexpected error, please report it as a bug")
        return 1


# --- the daemon loop ----------------------------------------------------------------------


class Exit(Exception):
    """Raised by a cycle to end its daemon with ``status``: a condition that waiting and
    retrying cannot resolve (announce's ID held by another live process). The loop lets
    it through; the daemon cleans up and returns ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Turn:
    """What one cycle of a daemon did: ``did`` is one sentence ("" when it did nothing),
    ``wait`` the seconds until the next cycle at the latest (a wake-up comes sooner)."""

    wait: float
    did: str = ""


class Loop:
    """patroni's daemon loop (STYLE.md), shared by announce, register and the lb: turn
    ``cycle`` until ``stop``; sleep what it asks, or until ``wake`` is set.

    One policy for errors, in one place: ``EtcdUnavailable`` is expected (etcd restarts,
    partitions) and logged once per outage, the loop backing off meanwhile; any other
    exception is a bug: logged with its trace and "please report it as a bug", counted,
    backed off, and the loop goes on. The loop ends only when ``stop`` is set, or when a
    cycle raises :class:`Exit`, which it lets through.
    """

    def __init__(
        self,
        name: str,
        cycle: Callable[[], Turn],
        *,
        stop: Stopper,
        wake: threading.Event | None = None,
        metrics: Metrics | None = None,
        backoff: Backoff | None = None,
        on_etcd_error: Callable[[EtcdUnavailable], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.cycle = cycle
        self.stop = stop
        self.wake = wake
        self.metrics = metrics
        self.backoff = backoff or Backoff(0.1, BACKOFF_MAX)
        self.on_etcd_error = on_etcd_error
        self.clock = clock
        #: When the last cycle ended, error or not (``/healthz``: the loop turns).
        self.last_turn: float | None = None
        #: The last cycle's sentence.
        self.last_did = ""
        #: Why the last cycle failed ("" when it succeeded; ``/readyz``).
        self.last_error = ""
        if wake is not None:
            stop.link(wake)

    def turn(self) -> float:
        """One cycle under the error policy; the seconds to wait before the next."""
        try:
            result = self.cycle()
        except Exit:
            self.last_turn = self.clock()
            raise
        except EtcdUnavailable as exc:
            if not self.backoff.failing:
                log.warning("[%s] etcd unavailable (%s); retrying with back-off", self.name, exc)
            if self.metrics is not None:
                self.metrics.etcd_errors.inc()
            if self.on_etcd_error is not None:
                self.on_etcd_error(exc)
            self.last_error = f"etcd unavailable ({exc})"
            delay = self.backoff.next()
        except Exception as exc:
            log.exception("[%s] unexpected error, please report it as a bug", self.name)
            if self.metrics is not None:
                self.metrics.loop_errors.inc()
            self.last_error = f"unexpected error ({exc!r})"
            delay = self.backoff.next()
        else:
            self.last_error = ""
            if self.backoff.failing:
                log.info("[%s] working again", self.name)
            self.backoff.reset()
            self.last_did = result.did
            if result.did:
                log.debug("[%s] %s", self.name, result.did)
            delay = max(0.0, result.wait)
        self.last_turn = self.clock()
        if self.metrics is not None:
            self.metrics.heartbeat.beat(self.last_error)
        return delay

    def run(self) -> None:
        while not self.stop.is_set():
            if self.wake is not None:
                self.wake.clear()  # before the cycle: a change during it wakes the next
            delay = self.turn()
            if self.stop.is_set():
                break
            if self.wake is not None:
                self.wake.wait(delay)
            else:
                self.stop.wait(delay)


def run_loop(
    name: str,
    cycle: Callable[[], Turn],
    *,
    stop: Stopper,
    wake: threading.Event | None = None,
    metrics: Metrics | None = None,
    backoff: Backoff | None = None,
    on_etcd_error: Callable[[EtcdUnavailable], None] | None = None,
) -> Loop:
    """Build a :class:`Loop` and run it until ``stop``; returns it (its last state).
    Raises :class:`Exit` when a cycle does."""
    loop = Loop(
        name,
        cycle,
        stop=stop,
        wake=wake,
        metrics=metrics,
        backoff=backoff,
        on_etcd_error=on_etcd_error,
    )
    loop.run()
    return loop
